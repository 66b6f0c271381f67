/*
 * The virtual disk layer: API contract and error paths, data integrity of raw and VDI
 * images against an in-memory model (cached and uncached, synchronous and queued),
 * ordering of concurrent allocating and read-modify-write requests, the flush-time
 * metadata commit, block status and info.
 */
#include "tst_common.h"
#include "tst_qemu_img.h"

#include "vd/qcow2.h"
#include "vd/vd_internal.h"

#include <rt/file.h>
#include <rt/vd.h>

#include <stdbool.h>
#include <sys/stat.h>

#define MIB (1024u * 1024u)
#define DISK_SIZE (8u * MIB)

static unsigned char model[DISK_SIZE];
static unsigned char scratch[DISK_SIZE];
static uint64_t prng_state = 0x9e3779b97f4a7c15u;

static uint64_t prng(void)
{
    prng_state ^= prng_state << 13;
    prng_state ^= prng_state >> 7;
    prng_state ^= prng_state << 17;
    return prng_state;
}

static void fill_random(unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)prng();
}

/* A fresh image of @a size in the scratch directory; returns its path in @a path. */
static void make_image(char *path, size_t room, const char *name, const char *format,
                       uint64_t size, uint32_t flags)
{
    tst_path(path, room, name);
    unlink(path);
    rt_vd_create_opts_t opts = {.size = size, .flags = flags};
    rt_vd_error_t err;
    int rc = rt_vd_create(path, format, &opts, &err);
    if (rc != RT_OK)
        fprintf(stderr, "  create %s: %s\n", path, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, RT_OK);
}

static bool uncached_supported(void)
{
    char path[600];
    tst_path(path, sizeof path, "direct-probe");
    rt_file_t file;
    int rc = rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE | RT_FILE_NO_CACHE,
                          0);
    if (rc == RT_OK)
        rt_file_close(file);
    unlink(path);
    return rc == RT_OK;
}

/* ---------------------------------------------------------------------------------- */
/* API contract and error paths. */

static void test_open_errors(void)
{
    char path[600];
    rt_vd_t vd = (rt_vd_t)1;
    rt_vd_error_t err;
    make_image(path, sizeof path, "errors.vdi", "vdi", MIB, 0);

    TST_RC(rt_vd_open(NULL, path, "vdi", 0, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_open(&vd, NULL, "vdi", 0, NULL), RT_ERR_INVALID_POINTER);
    CU_ASSERT_PTR_NULL(vd);
    TST_RC(rt_vd_open(&vd, path, "vdi", 0x100, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_open(&vd, path, "qcow9", 0, &err), RT_ERR_VD_UNKNOWN_FORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "qcow9"));
    /* A writable open must not trust a probe. */
    TST_RC(rt_vd_open(&vd, path, NULL, 0, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "format must be given"));
    CU_ASSERT_PTR_NULL(vd);

    char missing[600];
    tst_path(missing, sizeof missing, "no-such-image");
    TST_RC(rt_vd_open(&vd, missing, "raw", 0, &err), RT_ERR_FILE_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no-such-image"));

    /* An explicitly named format that the file is not. */
    char raw[600];
    make_image(raw, sizeof raw, "plain.raw", "raw", MIB, 0);
    TST_RC(rt_vd_open(&vd, raw, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_ERR_VD_CORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "signature"));

    /* Probing a read-only open finds each format. */
    TST_RC_FATAL(rt_vd_open(&vd, path, NULL, RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_STRING_EQUAL(info.format, "vdi");
    CU_ASSERT_TRUE(info.read_only);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, raw, NULL, RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_STRING_EQUAL(info.format, "raw");
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* Neither a regular file nor a block device: a FIFO would hang an open for reading
 * until a writer came (qemu-img hangs there), a directory would read as a tiny raw
 * disk.  Each is refused at once, with a message saying what it is, also when an
 * image names it as its backing file.  A watchdog alarm turns a hang into a failure. */
static void test_open_not_a_disk(void)
{
    char fifo[600], dir[600], overlay[600];
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    tst_path(fifo, sizeof fifo, "a-fifo");
    tst_path(dir, sizeof dir, "a-dir");
    unlink(fifo);
    rmdir(dir);
    CU_ASSERT_FATAL(mkfifo(fifo, 0600) == 0);
    CU_ASSERT_FATAL(mkdir(dir, 0700) == 0);
    alarm(20);

    const char *formats[] = {NULL, "raw", "qcow2", "vdi"};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        /* Probing is for read-only opens only. */
        uint32_t flags[] = {RT_VD_OPEN_READ_ONLY, 0};
        size_t n_flags = formats[i] == NULL ? 1 : 2;
        for (size_t f = 0; f < n_flags; f++) {
            TST_RC(rt_vd_open(&vd, fifo, formats[i], flags[f], &err), RT_ERR_NOT_SUPPORTED);
            CU_ASSERT_PTR_NULL(vd);
            CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "FIFO"));
            int rc = rt_vd_open(&vd, dir, formats[i], flags[f], &err);
            /* A writable open of a directory fails in open(2) already (EISDIR). */
            TST_RC(rc, RT_ERR_IS_A_DIRECTORY);
            CU_ASSERT_PTR_NULL(vd);
            if (flags[f] == RT_VD_OPEN_READ_ONLY)
                CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "directory"));
        }
    }

    /* The same as a backing file: refused, not read as zeros or waited on. */
    const char *targets[] = {fifo, dir};
    const char *words[] = {"FIFO", "directory"};
    for (size_t t = 0; t < 2; t++) {
        tst_path(overlay, sizeof overlay, "over-not-a-disk.qcow2");
        unlink(overlay);
        rt_vd_create_opts_t opts = {.size = MIB, .backing_file = targets[t],
                                    .backing_format = "raw"};
        TST_RC_FATAL(rt_vd_create(overlay, "qcow2", &opts, &err), RT_OK);
        int rc = rt_vd_open(&vd, overlay, "qcow2", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING,
                            &err);
        CU_ASSERT(rc == RT_ERR_NOT_SUPPORTED || rc == RT_ERR_IS_A_DIRECTORY);
        CU_ASSERT_PTR_NULL(vd);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, words[t]));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "backing file"));
        /* Creating an overlay that takes its size from such a file fails too. */
        unlink(overlay);
        rt_vd_create_opts_t sized = {.backing_file = targets[t], .backing_format = "raw"};
        rc = rt_vd_create(overlay, "qcow2", &sized, &err);
        CU_ASSERT(rc == RT_ERR_NOT_SUPPORTED || rc == RT_ERR_IS_A_DIRECTORY);
        CU_ASSERT(access(overlay, F_OK) != 0);
    }
    alarm(0);
    unlink(fifo);
    rmdir(dir);
    unlink(overlay);
}

/* A QCOW2 backing name must fit in cluster 0 after the header and the extensions:
 * with 512-byte clusters a version 3 header (112 bytes) and the end marker (8) leave
 * 392 bytes, 376 with a backing format extension ("raw": 16 bytes).  Exactly that fits
 * and is stored whole; one byte more, and the 505..1023-byte names whose room once
 * wrapped around (writing past the header buffer), are refused and leave no file. */
static void test_create_qcow2_backing_name_room(void)
{
    char path[600];
    char name[1100];
    rt_vd_error_t err;
    tst_path(path, sizeof path, "room.qcow2");
    struct {
        size_t len;
        const char *format;
        int want;
    } cases[] = {
        {392, NULL, RT_OK},     {393, NULL, RT_ERR_INVALID_PARAMETER},
        {376, "raw", RT_OK},    {377, "raw", RT_ERR_INVALID_PARAMETER},
        {505, "raw", RT_ERR_INVALID_PARAMETER}, {511, NULL, RT_ERR_INVALID_PARAMETER},
        {1023, "raw", RT_ERR_INVALID_PARAMETER}, {1024, NULL, RT_ERR_INVALID_PARAMETER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(name, 'n', cases[i].len);
        name[cases[i].len] = '\0';
        unlink(path);
        rt_vd_create_opts_t opts = {.size = MIB, .block_size = 512, .version = 3,
                                    .backing_file = name, .backing_format = cases[i].format};
        int rc = rt_vd_create(path, "qcow2", &opts, &err);
        if (rc != cases[i].want)
            fprintf(stderr, "  name of %zu bytes: %s\n", cases[i].len, err.msg);
        TST_RC(rc, cases[i].want);
        if (cases[i].want != RT_OK) {
            CU_ASSERT_EQUAL(access(path, F_OK), -1);
            continue;
        }
        /* Stored whole: the open names it (and refuses to follow it). */
        rt_vd_t vd = RT_VD_NIL;
        TST_RC(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_ERR_ACCESS_DENIED);
        name[100] = '\0'; /* the message shows a prefix of it */
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, name));
    }
    /* An unknown backing format is refused, as qemu-img refuses it. */
    unlink(path);
    rt_vd_create_opts_t bad = {.size = MIB, .backing_file = "b.raw", .backing_format = "foo"};
    TST_RC(rt_vd_create(path, "qcow2", &bad, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "foo"));
    CU_ASSERT_EQUAL(access(path, F_OK), -1);
}

/* Every driver claims exactly what it has: the layer never calls a missing operation,
 * and the one driver list is what rt_vd_formats() names. */
static void test_driver_tables(void)
{
    const char *const *names = rt_vd_formats();
    size_t n = 0;
    for (const struct vd_driver *const *d = rt__vd_drivers; *d != NULL; d++, n++) {
        const struct vd_driver *v = *d;
        CU_ASSERT_PTR_NOT_NULL(names[n]);
        if (names[n] != NULL)
            CU_ASSERT_STRING_EQUAL(names[n], v->name);
        CU_ASSERT(v->probe != NULL && v->open != NULL && v->close != NULL && v->map != NULL &&
                  v->info != NULL);
        CU_ASSERT(!(v->caps & VD_CAP_CREATE) || v->create != NULL);
        CU_ASSERT(!(v->caps & VD_CAP_ALLOC) ||
                  (v->alloc != NULL && v->alloc_done != NULL && v->commit != NULL));
        CU_ASSERT(!(v->caps & VD_CAP_COMPRESSED_READ) || v->read_compressed != NULL);
        CU_ASSERT(!(v->caps & VD_CAP_COMPRESSED_WRITE) || v->write_compressed != NULL);
        CU_ASSERT(!(v->caps & VD_CAP_CHECK) || v->check != NULL);
        CU_ASSERT(!(v->caps & VD_CAP_ALLOC) || (v->caps & VD_CAP_WRITE));
        CU_ASSERT_PTR_NOT_NULL(rt_vd_format_options(v->name, RT_VD_OPTIONS_CREATE));
        CU_ASSERT_PTR_NOT_NULL(rt_vd_format_options(v->name, RT_VD_OPTIONS_OPEN));
    }
    CU_ASSERT_PTR_NULL(names[n]);
    CU_ASSERT_PTR_NULL(rt_vd_format_options("qcow9", RT_VD_OPTIONS_CREATE));
    CU_ASSERT_PTR_NULL(rt_vd_format_options("qcow2", 7));
}

/* The engine's side of the interface for formats made of several files (VMDK extents):
 * a test driver over raw maps the second half of the disk to a second file it adds, and
 * tracks plain writes through write_done.  Data must land in the file the map names,
 * flush must reach both, and every written byte must be reported once. */
static uint64_t split_half;
static uint64_t split_reported;
static bool split_range_ok = true;

static int split_map(rt_vd_t vd, uint64_t off, uint64_t len, struct vd_map *map,
                     struct vd_load *load)
{
    (void)vd;
    (void)load;
    memset(map, 0, sizeof *map);
    map->kind = VD_MAP_DATA;
    map->file = off < split_half ? 0 : 1;
    map->host_off = off < split_half ? off : off - split_half;
    map->length = off < split_half && len > split_half - off ? split_half - off : len;
    return RT_OK;
}

static void split_write_done(rt_vd_t vd, uint64_t off, uint64_t len)
{
    if (len == 0 || off + len > vd->size)
        split_range_ok = false;
    split_reported += len;
}

static void test_driver_several_files(void)
{
    char path[600], second[600];
    make_image(path, sizeof path, "split-a.raw", "raw", 2 * MIB, 0);
    make_image(second, sizeof second, "split-b.raw", "raw", MIB, 0);
    rt_vd_t vd = RT_VD_NIL;
    rt_file_t file = RT_FILE_NIL;
    TST_RC(rt_vd_open(&vd, path, "raw", 0, NULL), RT_OK);
    TST_RC(rt_file_open(&file, second, RT_FILE_READWRITE | RT_FILE_OPEN | RT_FILE_ASYNC_IO, 0),
           RT_OK);
    if (vd == RT_VD_NIL || file == RT_FILE_NIL)
        return;
    const struct vd_driver *raw = vd->driver;
    static struct vd_driver split;
    split = *raw;
    split.map = split_map;
    split.write_done = split_write_done;
    split_half = MIB;
    split_reported = 0;
    vd->driver = &split;
    uint32_t index = 0;
    TST_RC(rt__vd_add_file(vd, file, &index), RT_OK);
    CU_ASSERT_EQUAL(index, 1);

    /* One request across the boundary, through the queue and synchronously. */
    static unsigned char out[3 * 65536], in[sizeof out];
    fill_random(out, sizeof out);
    uint64_t at = MIB - 65536;
    TST_RC(rt_vd_write(vd, at, out, sizeof out), RT_OK);
    TST_RC(rt_vd_flush(vd), RT_OK);
    CU_ASSERT_EQUAL(split_reported, sizeof out);
    CU_ASSERT(split_range_ok);
    TST_RC(rt_vd_read(vd, at, in, sizeof in), RT_OK);
    CU_ASSERT(memcmp(in, out, sizeof in) == 0);
    vd->driver = raw; /* close frees what raw opened */
    TST_RC(rt_vd_close(vd), RT_OK);

    /* The bytes are where the map put them: 64 KiB at the end of the first file, the
     * rest at the start of the second. */
    FILE *a = fopen(path, "rb"), *b = fopen(second, "rb");
    CU_ASSERT_FATAL(a != NULL && b != NULL);
    memset(in, 0, sizeof in);
    CU_ASSERT_EQUAL(fseek(a, (long)at, SEEK_SET), 0);
    CU_ASSERT_EQUAL(fread(in, 1, 65536, a), 65536);
    CU_ASSERT_EQUAL(fread(in + 65536, 1, 65536, b), 65536);
    CU_ASSERT_EQUAL(fread(in + 2 * 65536, 1, 65536, b), 65536);
    CU_ASSERT(memcmp(in, out, sizeof in) == 0);
    fclose(a);
    fclose(b);
}

/* Each format's own options: listed, taken, and refused by name when unknown, given
 * twice, without a value or with one the format does not take. */
static void test_format_options(void)
{
    char path[600];
    rt_vd_error_t err;
    rt_vd_t vd = RT_VD_NIL;
    tst_path(path, sizeof path, "options.qcow2");
    const rt_vd_option_t *o = rt_vd_format_options("qcow2", RT_VD_OPTIONS_CREATE);
    bool listed = false;
    for (; o != NULL && o->name != NULL; o++)
        listed |= strcmp(o->name, "refcount_bits") == 0 && o->help != NULL && o->value != NULL;
    CU_ASSERT(listed);

    struct {
        const char *format;
        const char *options[3];
        int want;
        const char *word;
    } cases[] = {
        {"qcow2", {"refcount_bits=8", NULL}, RT_OK, NULL},
        {"qcow2", {"frobs=1", NULL}, RT_ERR_INVALID_PARAMETER, "frobs"},
        {"qcow2", {"refcount_bits", NULL}, RT_ERR_INVALID_PARAMETER, "value"},
        {"qcow2", {"refcount_bits=8", "refcount_bits=4", NULL}, RT_ERR_INVALID_PARAMETER, "twice"},
        {"qcow2", {"refcount_bits=3", NULL}, RT_ERR_INVALID_PARAMETER, "refcount_bits"},
        {"qcow2", {"refcount_bits=128", NULL}, RT_ERR_INVALID_PARAMETER, "refcount_bits"},
        {"vdi", {"refcount_bits=8", NULL}, RT_ERR_INVALID_PARAMETER, "vdi"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unlink(path);
        rt_vd_create_opts_t opts = {.size = MIB, .options = cases[i].options};
        int rc = rt_vd_create(path, cases[i].format, &opts, &err);
        TST_RC(rc, cases[i].want);
        if (cases[i].word != NULL)
            CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, cases[i].word));
        CU_ASSERT_EQUAL(access(path, F_OK) == 0, rc == RT_OK);
    }
    /* A version 2 image counts in 16 bits only. */
    unlink(path);
    const char *eight[] = {"refcount_bits=8", NULL};
    rt_vd_create_opts_t v2 = {.size = MIB, .version = 2, .options = eight};
    TST_RC(rt_vd_create(path, "qcow2", &v2, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "compat"));

    /* Open options. */
    unlink(path);
    rt_vd_create_opts_t plain = {.size = MIB};
    TST_RC_FATAL(rt_vd_create(path, "qcow2", &plain, &err), RT_OK);
    const char *cache[] = {"l2-cache-size=1M", NULL};
    TST_RC(rt_vd_open_with(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, cache, &err), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    const char *bad_size[] = {"l2-cache-size=lots", NULL};
    TST_RC(rt_vd_open_with(&vd, path, "qcow2", 0, bad_size, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "l2-cache-size"));
    CU_ASSERT_PTR_NULL(vd);
    const char *unknown[] = {"cache=none", NULL};
    TST_RC(rt_vd_open_with(&vd, path, "qcow2", 0, unknown, &err), RT_ERR_INVALID_PARAMETER);
    /* A probed open takes none: which format's would they be? */
    TST_RC(rt_vd_open_with(&vd, path, NULL, RT_VD_OPEN_READ_ONLY, cache, &err),
           RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_open_with(&vd, path, "raw", RT_VD_OPEN_READ_ONLY, cache, &err),
           RT_ERR_INVALID_PARAMETER);
    unlink(path);
}

static void test_create_errors(void)
{
    char path[600];
    rt_vd_error_t err;
    tst_path(path, sizeof path, "create-errors.vdi");
    unlink(path);
    rt_vd_create_opts_t opts = {.size = MIB};
    TST_RC(rt_vd_create(NULL, "vdi", &opts, &err), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_create(path, NULL, &opts, &err), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_create(path, "vdi", NULL, &err), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_create(path, "nope", &opts, &err), RT_ERR_VD_UNKNOWN_FORMAT);
    opts.size = 1000;
    TST_RC(rt_vd_create(path, "vdi", &opts, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "512"));
    opts.size = 0; /* without a backing file: an empty disk, as qemu-img makes one */
    TST_RC(rt_vd_create(path, "raw", &opts, &err), RT_OK);
    rt_vd_t empty;
    rt_vd_info_t info;
    TST_RC_FATAL(rt_vd_open(&empty, path, "raw", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_get_info(empty, &info), RT_OK);
    CU_ASSERT_EQUAL(info.virtual_size, 0);
    TST_RC(rt_vd_read(empty, 0, NULL, 0), RT_OK);
    TST_RC(rt_vd_read(empty, 0, &info, 1), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_close(empty), RT_OK);
    unlink(path);
    opts.size = MIB;
    opts.flags = 0x80;
    TST_RC(rt_vd_create(path, "vdi", &opts, &err), RT_ERR_INVALID_PARAMETER);
    opts.flags = 0;
    opts.block_size = 3000;
    TST_RC(rt_vd_create(path, "vdi", &opts, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "block size"));
    opts.block_size = 4096;
    TST_RC(rt_vd_create(path, "raw", &opts, &err), RT_ERR_INVALID_PARAMETER);
    /* No failed create leaves a file behind. */
    CU_ASSERT_EQUAL(access(path, F_OK), -1);

    opts.block_size = 0;
    TST_RC(rt_vd_create(path, "vdi", &opts, &err), RT_OK);
    TST_RC(rt_vd_create(path, "vdi", &opts, &err), RT_ERR_ALREADY_EXISTS);
    /* ...and a refused create does not remove the file that was there. */
    CU_ASSERT_EQUAL(access(path, F_OK), 0);
}

static void test_io_errors(void)
{
    char path[600];
    rt_vd_t vd;
    char buf[512] = {0};
    make_image(path, sizeof path, "io-errors.vdi", "vdi", MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, NULL), RT_OK);

    TST_RC(rt_vd_read(vd, MIB - 100, buf, 200), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_write(vd, MIB, buf, 1), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_read(vd, UINT64_MAX, buf, 2), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_read(vd, 0, NULL, 10), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_read(vd, 0, buf, 0), RT_OK);
    TST_RC(rt_vd_read(vd, MIB, buf, 0), RT_OK);
    rt_iovec_t iov[2] = {{buf, 10}, {NULL, 10}};
    TST_RC(rt_vd_readv(vd, 0, iov, 2), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_readv(vd, 0, NULL, 1), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_readv(vd, 0, iov, 1025), RT_ERR_INVALID_PARAMETER);
    rt_vd_extent_t ext;
    TST_RC(rt_vd_block_status(vd, MIB, 1, &ext), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_block_status(vd, 0, 0, &ext), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_block_status(vd, 0, 1, NULL), RT_ERR_INVALID_POINTER);
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0x10, &res), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_check(vd, 0, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_get_info(vd, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_close(vd), RT_OK);

    /* A closed handle is recognised, not trusted. */
    TST_RC(rt_vd_read(vd, 0, buf, 1), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_close(vd), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_flush(vd), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_get_info(vd, &(rt_vd_info_t){0}), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_close(RT_VD_NIL), RT_OK);

    /* Read-only images refuse writes and repairs, and flush trivially. */
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_write(vd, 0, buf, 1), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_flush(vd), RT_OK);
    TST_RC(rt_vd_read(vd, 0, buf, sizeof buf), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
}

static void noop_done(void *user, int status)
{
    (*(int *)user)++;
}

static void test_queue_errors(void)
{
    char path[600];
    rt_vd_t vd;
    rt_vd_queue_t q1, q2;
    char buf[512] = {0};
    rt_iovec_t iov = {buf, sizeof buf};
    int calls = 0;
    make_image(path, sizeof path, "queue-errors.vdi", "vdi", MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, NULL), RT_OK);

    TST_RC(rt_vd_queue_create(NULL, 8), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_queue_create(&q1, 5000), RT_ERR_INVALID_PARAMETER);
    TST_RC_FATAL(rt_vd_queue_create(&q1, 8), RT_OK);
    TST_RC_FATAL(rt_vd_queue_create(&q2, 0), RT_OK);

    TST_RC(rt_vd_queue_read(q1, vd, 0, &iov, 1, NULL, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_queue_read(RT_VD_QUEUE_NIL, vd, 0, &iov, 1, noop_done, &calls),
           RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_queue_read(q1, RT_VD_NIL, 0, &iov, 1, noop_done, &calls), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_queue_read(q1, vd, MIB, &iov, 1, noop_done, &calls), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_queue_run(q1, 1, 0, NULL), RT_ERR_AIO_NO_REQUEST);
    TST_RC(rt_vd_queue_run(q1, 0, 0, NULL), RT_OK);

    /* An image with requests on one queue is busy for every other queue and for the
     * synchronous calls, and cannot be closed; the queue cannot be destroyed. */
    TST_RC_FATAL(rt_vd_queue_write(q1, vd, 0, &iov, 1, noop_done, &calls), RT_OK);
    CU_ASSERT_EQUAL(calls, 0); /* never from inside the call */
    TST_RC(rt_vd_queue_read(q2, vd, 0, &iov, 1, noop_done, &calls), RT_ERR_BUSY);
    TST_RC(rt_vd_read(vd, 0, buf, 1), RT_ERR_BUSY);
    TST_RC(rt_vd_flush(vd), RT_ERR_BUSY);
    TST_RC(rt_vd_check(vd, 0, &(rt_vd_check_result_t){0}), RT_ERR_BUSY);
    TST_RC(rt_vd_close(vd), RT_ERR_AIO_BUSY);
    TST_RC(rt_vd_queue_destroy(q1), RT_ERR_AIO_BUSY);
    uint32_t completed = 0;
    TST_RC(rt_vd_queue_run(q1, 1, 5000, &completed), RT_OK);
    CU_ASSERT_EQUAL(completed, 1);
    CU_ASSERT_EQUAL(calls, 1);

    /* Wakeup ends a run (and is remembered when nobody runs). */
    TST_RC(rt_vd_queue_wakeup(q1), RT_OK);
    TST_RC(rt_vd_queue_read(q1, vd, 0, &iov, 1, noop_done, &calls), RT_OK);
    int rc = rt_vd_queue_run(q1, 2, 5000, &completed);
    CU_ASSERT_TRUE(rc == RT_ERR_INTERRUPTED || rc == RT_ERR_AIO_NO_REQUEST);
    while (calls < 2)
        TST_RC_FATAL(rt_vd_queue_run(q1, 1, 5000, NULL), RT_OK);

    /* Zero-length requests and read-only flushes complete through the queue too. */
    TST_RC(rt_vd_queue_read(q1, vd, MIB, &iov, 0, noop_done, &calls), RT_OK);
    TST_RC(rt_vd_queue_flush(q1, vd, noop_done, &calls), RT_OK);
    TST_RC(rt_vd_queue_run(q1, 2, 5000, &completed), RT_OK);
    CU_ASSERT_EQUAL(calls, 4);

    TST_RC(rt_vd_queue_destroy(q1), RT_OK);
    TST_RC(rt_vd_queue_destroy(q2), RT_OK);
    TST_RC(rt_vd_queue_destroy(q1), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_queue_run(q1, 0, 0, NULL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_queue_wakeup(q1), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_queue_destroy(RT_VD_QUEUE_NIL), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
}

struct reentry {
    rt_vd_queue_t queue;
    rt_vd_t vd;
    int destroy_rc, run_rc, close_rc;
};

static void reentering_done(void *user, int status)
{
    struct reentry *r = user;
    r->destroy_rc = rt_vd_queue_destroy(r->queue);
    r->run_rc = rt_vd_queue_run(r->queue, 0, 0, NULL);
    r->close_rc = rt_vd_close(r->vd); /* its last request: allowed */
}

/* What a callback may and may not do with its own queue and image. */
static void test_callback_reentry(void)
{
    char path[600];
    char buf[100] = {0};
    rt_iovec_t iov = {buf, sizeof buf};
    struct reentry r;
    make_image(path, sizeof path, "reentry.vdi", "vdi", MIB, 0);
    TST_RC_FATAL(rt_vd_open(&r.vd, path, "vdi", 0, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_queue_create(&r.queue, 4), RT_OK);
    TST_RC_FATAL(rt_vd_queue_write(r.queue, r.vd, 10, &iov, 1, reentering_done, &r), RT_OK);
    TST_RC(rt_vd_queue_run(r.queue, 1, 5000, NULL), RT_OK);
    TST_RC(r.destroy_rc, RT_ERR_AIO_BUSY);
    TST_RC(r.run_rc, RT_ERR_AIO_BUSY);
    TST_RC(r.close_rc, RT_OK);
    TST_RC(rt_vd_queue_destroy(r.queue), RT_OK);
}

static void test_formats_list(void)
{
    const char *const *names = rt_vd_formats();
    bool raw = false, vdi = false;
    for (; *names != NULL; names++) {
        raw |= strcmp(*names, "raw") == 0;
        vdi |= strcmp(*names, "vdi") == 0;
    }
    CU_ASSERT_TRUE(raw && vdi);
}

/* ---------------------------------------------------------------------------------- */
/* Data integrity against a model. */

/* @a rounds random synchronous reads and writes against the model, at any offset and
 * up to @a max_len bytes, @a writes_in_3 of every three writes, a flush every
 * @a flush_every rounds; every read must match the model. */
static void model_steps(rt_vd_t vd, int rounds, size_t max_len, unsigned writes_in_3,
                        int flush_every, bool some_aligned)
{
    for (int i = 0; i < rounds; i++) {
        uint64_t off = prng() % DISK_SIZE;
        size_t len = (size_t)(prng() % max_len);
        if (some_aligned && prng() % 4 == 0)
            off &= ~(uint64_t)4095; /* aligned ones too, the zero-copy path */
        if (off + len > DISK_SIZE)
            len = DISK_SIZE - off;
        if (prng() % 3 < writes_in_3) {
            fill_random(scratch, len);
            TST_RC_FATAL(rt_vd_write(vd, off, scratch, len), RT_OK);
            memcpy(model + off, scratch, len);
        } else {
            TST_RC_FATAL(rt_vd_read(vd, off, scratch, len), RT_OK);
            CU_ASSERT_FATAL(memcmp(scratch, model + off, len) == 0);
        }
        if (i % flush_every == 0)
            TST_RC(rt_vd_flush(vd), RT_OK);
    }
}

/* Random synchronous reads and writes at any offset and length, flushes now and then,
 * then a reopen that must read back exactly the model. */
static void model_run(const char *format, uint32_t create_flags, uint32_t open_flags)
{
    char path[600];
    char name[64];
    snprintf(name, sizeof name, "model-%s-%x-%x", format, create_flags, open_flags);
    make_image(path, sizeof path, name, format, DISK_SIZE, create_flags);
    memset(model, 0, sizeof model);
    rt_vd_t vd;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, path, format, open_flags, &err);
    if (rc == RT_ERR_NOT_SUPPORTED && (open_flags & RT_VD_OPEN_NO_CACHE)) {
        printf("(uncached I/O refused here: %s) ", err.msg);
        return;
    }
    TST_RC_FATAL(rc, RT_OK);
    model_steps(vd, 600, 70000, 2, 150, true);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, NULL, RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_read(vd, 0, scratch, DISK_SIZE), RT_OK);
    CU_ASSERT(memcmp(scratch, model, DISK_SIZE) == 0);
    rt_vd_check_result_t res;
    if (strcmp(format, "raw") == 0) {
        /* Nothing to check in a raw image, as qemu-img says too (its exit 63). */
        TST_RC(rt_vd_check(vd, 0, &res), RT_ERR_NOT_SUPPORTED);
    } else {
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        CU_ASSERT_EQUAL(res.corruptions, 0);
        CU_ASSERT_EQUAL(res.leaks, 0);
    }
    TST_RC(rt_vd_close(vd), RT_OK);
}

static void test_model_raw_cached(void)
{
    model_run("raw", 0, 0);
}

static void test_model_raw_uncached(void)
{
    model_run("raw", 0, RT_VD_OPEN_NO_CACHE);
}

static void test_model_vdi_dynamic_cached(void)
{
    model_run("vdi", 0, 0);
}

static void test_model_vdi_dynamic_uncached(void)
{
    model_run("vdi", 0, RT_VD_OPEN_NO_CACHE);
}

static void test_model_vdi_static(void)
{
    model_run("vdi", RT_VD_CREATE_STATIC, 0);
    model_run("vdi", RT_VD_CREATE_STATIC, RT_VD_OPEN_NO_CACHE);
}

static void test_model_qcow2(void)
{
    model_run("qcow2", 0, 0);
    model_run("qcow2", 0, RT_VD_OPEN_NO_CACHE);
}

/* Uncached, a read that starts inside a sector of an unallocated block and runs into
 * an allocated one: the map answer counts from the sector's start, not the read's (it
 * once read pos - sector bytes too many as zeros). */
static void test_uncached_read_across_free_into_data(void)
{
    if (!uncached_supported()) {
        printf("(uncached I/O refused here) ");
        return;
    }
    char path[600];
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    tst_path(path, sizeof path, "cross-free.vdi");
    unlink(path);
    rt_vd_create_opts_t opts = {.size = MIB, .block_size = 4096};
    TST_RC_FATAL(rt_vd_create(path, "vdi", &opts, &err), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_NO_CACHE, &err), RT_OK);
    memset(scratch, 0xab, 4096);
    TST_RC(rt_vd_write(vd, 4096, scratch, 4096), RT_OK);
    TST_RC(rt_vd_read(vd, 300, scratch, 4096), RT_OK);
    size_t wrong = 0;
    for (size_t i = 0; i < 4096; i++)
        wrong += scratch[i] != (i < 4096 - 300 ? 0 : 0xab);
    CU_ASSERT_EQUAL(wrong, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

/* A cache of one L2 table (l2-cache-size of one cluster): every table is dropped and
 * read back again and again, tables this driver wrote among them (their entries point
 * at clusters allocated since the open, which must pass the check on the way back in),
 * with flushes in between so that written tables become clean and droppable. */
static void test_model_qcow2_tiny_l2_cache(void)
{
    char path[600];
    rt_vd_t vd;
    rt_vd_error_t err;
    rt_vd_create_opts_t opts = {.size = DISK_SIZE, .block_size = 4096};
    tst_path(path, sizeof path, "tiny-cache.qcow2");
    unlink(path);
    TST_RC_FATAL(rt_vd_create(path, "qcow2", &opts, &err), RT_OK);
    const char *cache[] = {"l2-cache-size=4096", NULL};
    TST_RC_FATAL(rt_vd_open_with(&vd, path, "qcow2", 0, cache, &err), RT_OK);
    memset(model, 0, sizeof model);
    model_steps(vd, 400, 20000, 2, 20, false);
    TST_RC(rt_vd_read(vd, 0, scratch, DISK_SIZE), RT_OK);
    CU_ASSERT(memcmp(scratch, model, DISK_SIZE) == 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open_with(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, cache, &err), RT_OK);
    TST_RC(rt_vd_read(vd, 0, scratch, DISK_SIZE), RT_OK);
    CU_ASSERT(memcmp(scratch, model, DISK_SIZE) == 0);
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* Small clusters: many L2 tables, refcount blocks and a growing refcount table. */
static void test_model_qcow2_small_clusters(void)
{
    char path[600];
    rt_vd_t vd;
    rt_vd_create_opts_t opts = {.size = DISK_SIZE, .block_size = 512, .version = 2};
    tst_path(path, sizeof path, "small.qcow2");
    unlink(path);
    TST_RC_FATAL(rt_vd_create(path, "qcow2", &opts, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    fill_random(model, DISK_SIZE);
    for (uint64_t off = 0; off < DISK_SIZE; off += 256 * 1024)
        TST_RC_FATAL(rt_vd_write(vd, off, model + off, 256 * 1024), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_read(vd, 0, scratch, DISK_SIZE), RT_OK);
    CU_ASSERT(memcmp(scratch, model, DISK_SIZE) == 0);
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks, 0);
    CU_ASSERT_EQUAL(res.blocks_allocated, DISK_SIZE / 512);
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* Compressed units: written, read back, rewritten in place by a plain write. */
static void test_qcow2_compressed(void)
{
    char path[600];
    rt_vd_t vd;
    rt_vd_create_opts_t opts = {.size = 4 * MIB + 4096, .block_size = 65536};
    tst_path(path, sizeof path, "compressed.qcow2");
    unlink(path);
    TST_RC_FATAL(rt_vd_create(path, "qcow2", &opts, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    static unsigned char unit[65536];
    memset(model, 0, 4 * MIB + 4096);
    for (uint64_t off = 0; off < 4 * MIB; off += 65536) {
        for (size_t i = 0; i < sizeof unit; i++)
            unit[i] = (unsigned char)((off >> 16) + i / 1000); /* compressible */
        TST_RC_FATAL(rt_vd_write_compressed(vd, off, unit, sizeof unit), RT_OK);
        memcpy(model + off, unit, sizeof unit);
    }
    /* The short tail unit, and one that does not compress (stored plainly). */
    fill_random(unit, 4096);
    TST_RC(rt_vd_write_compressed(vd, 4 * MIB, unit, 4096), RT_OK);
    memcpy(model + 4 * MIB, unit, 4096);
    TST_RC(rt_vd_write_compressed(vd, 100, unit, 65536), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_write_compressed(vd, 0, unit, 100), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_write_compressed(vd, 8 * MIB, unit, 65536), RT_ERR_OUT_OF_RANGE);
    rt_vd_extent_t ext;
    TST_RC(rt_vd_block_status(vd, 0, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_TRUE(ext.flags & RT_VD_EXTENT_COMPRESSED);
    /* A plain write into a compressed unit rewrites it whole. */
    fill_random(unit, 3000);
    TST_RC(rt_vd_write(vd, 65536 + 100, unit, 3000), RT_OK);
    memcpy(model + 65536 + 100, unit, 3000);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_read(vd, 0, scratch, 4 * MIB + 4096), RT_OK);
    CU_ASSERT(memcmp(scratch, model, 4 * MIB + 4096) == 0);
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks, 0);
    TST_RC(rt_vd_write_compressed(vd, 0, unit, 65536), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);
    /* Formats without compression say so. */
    char vdi[600];
    make_image(vdi, sizeof vdi, "nocompress.vdi", "vdi", MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd, vdi, "vdi", 0, NULL), RT_OK);
    TST_RC(rt_vd_write_compressed(vd, 0, unit, MIB), RT_ERR_NOT_SUPPORTED);
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* A backing chain: reads fall through, writes copy the rest of the cluster up, and
 * the file reference is followed only when the caller allows it. */
static void test_qcow2_backing(void)
{
    char base[600], top[600];
    rt_vd_t vd;
    rt_vd_error_t err;
    make_image(base, sizeof base, "chain-base.raw", "raw", 2 * MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd, base, "raw", 0, NULL), RT_OK);
    fill_random(model, 2 * MIB);
    TST_RC(rt_vd_write(vd, 0, model, 2 * MIB), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);

    tst_path(top, sizeof top, "chain-top.qcow2");
    unlink(top);
    rt_vd_create_opts_t opts = {.backing_file = "chain-base.raw", .backing_format = "raw"};
    TST_RC_FATAL(rt_vd_create(top, "qcow2", &opts, &err), RT_OK); /* size from the base */
    TST_RC(rt_vd_open(&vd, top, "qcow2", 0, &err), RT_ERR_ACCESS_DENIED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "chain-base.raw"));
    TST_RC_FATAL(rt_vd_open(&vd, top, "qcow2", RT_VD_OPEN_ALLOW_BACKING, &err), RT_OK);
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_EQUAL(info.virtual_size, 2 * MIB);
    unsigned char data[1000];
    fill_random(data, sizeof data);
    TST_RC(rt_vd_write(vd, 70000, data, sizeof data), RT_OK);
    memcpy(model + 70000, data, sizeof data);
    TST_RC(rt_vd_read(vd, 0, scratch, 2 * MIB), RT_OK);
    CU_ASSERT(memcmp(scratch, model, 2 * MIB) == 0);
    rt_vd_extent_t ext;
    TST_RC(rt_vd_block_status(vd, 0, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.depth, 1);
    TST_RC(rt_vd_block_status(vd, 65536, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.depth, 0);
    CU_ASSERT_EQUAL(ext.length, 65536);
    /* Each depth names its file: the top as opened, the base resolved beside it. */
    CU_ASSERT_STRING_EQUAL(rt_vd_chain_path(vd, 0), top);
    CU_ASSERT_STRING_EQUAL(rt_vd_chain_path(vd, 1), base);
    CU_ASSERT_PTR_NULL(rt_vd_chain_path(vd, 2));
    CU_ASSERT_PTR_NULL(rt_vd_chain_path(RT_VD_NIL, 0));
    TST_RC(rt_vd_close(vd), RT_OK);

    /* A chain that names itself is stopped, not followed forever. */
    char loop[600];
    tst_path(loop, sizeof loop, "loop.qcow2");
    unlink(loop);
    rt_vd_create_opts_t self = {.size = MIB, .backing_file = "loop.qcow2", .backing_format = "qcow2"};
    TST_RC_FATAL(rt_vd_create(loop, "qcow2", &self, &err), RT_OK);
    TST_RC(rt_vd_open(&vd, loop, "qcow2", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING, &err),
           RT_ERR_VD_CORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "deeper"));
    /* Versions and backing files are QCOW2's alone. */
    opts = (rt_vd_create_opts_t){.size = MIB, .version = 2};
    TST_RC(rt_vd_create(loop, "vdi", &opts, &err), RT_ERR_INVALID_PARAMETER);
    opts = (rt_vd_create_opts_t){.size = MIB, .version = 4};
    tst_path(loop, sizeof loop, "v4.qcow2");
    TST_RC(rt_vd_create(loop, "qcow2", &opts, &err), RT_ERR_INVALID_PARAMETER);
    opts = (rt_vd_create_opts_t){.size = MIB, .block_size = 256};
    TST_RC(rt_vd_create(loop, "qcow2", &opts, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_EQUAL(access(loop, F_OK), -1);
}

/* An overlay opened alone (RT_VD_OPEN_NO_BACKING), as qemu-img info opens it: its
 * backing file is named but not opened, so it need not exist; what would need it (reads,
 * block status) is refused rather than answered as zeros. */
static void test_qcow2_no_backing(void)
{
    char base[600], top[600];
    rt_vd_t vd;
    rt_vd_error_t err;
    rt_vd_info_t info;
    rt_vd_check_result_t res;
    rt_vd_extent_t ext;
    unsigned char buf[512];
    make_image(base, sizeof base, "alone-base.raw", "raw", MIB, 0);
    tst_path(top, sizeof top, "alone-top.qcow2");
    unlink(top);
    rt_vd_create_opts_t opts = {.backing_file = "alone-base.raw", .backing_format = "raw"};
    TST_RC_FATAL(rt_vd_create(top, "qcow2", &opts, &err), RT_OK);
    unlink(base);

    const uint32_t alone = RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_NO_BACKING;
    const char *formats[] = {"qcow2", NULL};
    for (int f = 0; f < 2; f++) {
        TST_RC_FATAL(rt_vd_open(&vd, top, formats[f], alone, &err), RT_OK);
        TST_RC(rt_vd_get_info(vd, &info), RT_OK);
        CU_ASSERT_STRING_EQUAL(info.backing_file, "alone-base.raw");
        CU_ASSERT_STRING_EQUAL(info.backing_format, "raw");
        CU_ASSERT(info.backing_unopened);
        CU_ASSERT_EQUAL(info.virtual_size, MIB);
        TST_RC(rt_vd_read(vd, 0, buf, sizeof buf), RT_ERR_ACCESS_DENIED);
        TST_RC(rt_vd_block_status(vd, 0, MIB, &ext), RT_ERR_ACCESS_DENIED);
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    /* Following the (missing) file still fails, and says which. */
    TST_RC(rt_vd_open(&vd, top, "qcow2", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING, &err),
           RT_ERR_FILE_NOT_FOUND);
    /* Writable too, for metadata only (an unsafe rebase names a new one): data I/O is
     * refused, a flush is not.  Never together with following it. */
    TST_RC_FATAL(rt_vd_open(&vd, top, "qcow2", RT_VD_OPEN_NO_BACKING, &err), RT_OK);
    TST_RC(rt_vd_write(vd, 0, buf, sizeof buf), RT_ERR_ACCESS_DENIED);
    TST_RC(rt_vd_write_zeroes(vd, 0, sizeof buf, 0), RT_ERR_ACCESS_DENIED);
    TST_RC(rt_vd_discard(vd, 0, sizeof buf), RT_ERR_ACCESS_DENIED);
    TST_RC(rt_vd_flush(vd), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC(rt_vd_open(&vd, top, "qcow2", alone | RT_VD_OPEN_ALLOW_BACKING, &err),
           RT_ERR_INVALID_PARAMETER);
    /* On an image without a backing file the flag changes nothing. */
    make_image(base, sizeof base, "alone-plain.qcow2", "qcow2", MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd, base, "qcow2", alone, &err), RT_OK);
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_PTR_NULL(info.backing_file);
    CU_ASSERT(!info.backing_unopened);
    TST_RC(rt_vd_read(vd, 0, buf, sizeof buf), RT_OK);
    TST_RC(rt_vd_block_status(vd, 0, MIB, &ext), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(top);
}

/* Scatter/gather with odd pieces, including empty ones and unaligned addresses. */
static void test_vectors(void)
{
    char path[600];
    rt_vd_t vd;
    make_image(path, sizeof path, "vectors.vdi", "vdi", 4 * MIB, 0);
    uint32_t flags = uncached_supported() ? RT_VD_OPEN_NO_CACHE : 0;
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", flags, NULL), RT_OK);
    unsigned char *data = malloc(300000), *back = malloc(300000);
    CU_ASSERT_FATAL(data != NULL && back != NULL);
    fill_random(data, 300000);
    size_t cuts[] = {1, 0, 4095, 513, 100000, 0, 7, 195384 - 1, 1};
    rt_iovec_t iov[9], iov_back[9];
    size_t at = 0;
    for (int i = 0; i < 9; i++) {
        iov[i] = (rt_iovec_t){data + at, cuts[i]};
        iov_back[i] = (rt_iovec_t){back + at, cuts[i]};
        at += cuts[i];
    }
    CU_ASSERT_EQUAL_FATAL(at, 300000);
    TST_RC(rt_vd_writev(vd, MIB - 12345, iov, 9), RT_OK);
    memset(back, 0, 300000);
    TST_RC(rt_vd_readv(vd, MIB - 12345, iov_back, 9), RT_OK);
    CU_ASSERT(memcmp(data, back, 300000) == 0);
    /* Unallocated neighbours still read as zeros. */
    TST_RC(rt_vd_read(vd, 3 * MIB, back, 4096), RT_OK);
    CU_ASSERT(back[0] == 0 && back[4095] == 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    free(data);
    free(back);
}

/* ---------------------------------------------------------------------------------- */
/* Queued requests: ordering, and flush-time metadata. */

struct tracked {
    int status;
    bool done;
};

static void tracked_done(void *user, int status)
{
    struct tracked *t = user;
    t->status = status;
    t->done = true;
}

static void run_until_done(rt_vd_queue_t q, struct tracked *t, size_t n)
{
    for (;;) {
        size_t left = 0;
        for (size_t i = 0; i < n; i++)
            left += !t[i].done;
        if (left == 0)
            return;
        TST_RC_FATAL(rt_vd_queue_run(q, 1, 10000, NULL), RT_OK);
    }
}

/* Allocations keep L2 tables dirty until a commit.  With a cache of 4 tables and writes
 * into 32, the engine must commit before the flush (the metadata budget): a second
 * reader of the file sees most of the data with no flush asked, the image is clean for
 * qemu-img meanwhile, and at most a few tables stay in memory. */
static void test_qcow2_metadata_writeback(void)
{
    char path[600];
    rt_vd_t vd = RT_VD_NIL, reader = RT_VD_NIL;
    rt_vd_error_t err;
    const uint64_t size = 64 * MIB, table_span = 2 * MIB; /* 4 KiB clusters */
    rt_vd_create_opts_t opts = {.size = size, .block_size = 4096};
    tst_path(path, sizeof path, "writeback.qcow2");
    unlink(path);
    TST_RC_FATAL(rt_vd_create(path, "qcow2", &opts, &err), RT_OK);
    const char *cache[] = {"l2-cache-size=16k", NULL};
    TST_RC_FATAL(rt_vd_open_with(&vd, path, "qcow2", 0, cache, &err), RT_OK);
    rt_vd_queue_t q = RT_VD_QUEUE_NIL;
    TST_RC_FATAL(rt_vd_queue_create(&q, 4), RT_OK);
    static uint8_t data[32][4096];
    struct tracked t[32] = {{0}};
    for (int i = 0; i < 32; i++) {
        memset(data[i], 0x40 + i, 4096);
        rt_iovec_t iov = {data[i], 4096};
        TST_RC(rt_vd_queue_write(q, vd, (uint64_t)i * table_span, &iov, 1, tracked_done, &t[i]),
               RT_OK);
    }
    run_until_done(q, t, 32);
    for (int i = 0; i < 32; i++)
        TST_RC(t[i].status, RT_OK);

    /* No flush yet.  What a second reader finds is what the commits wrote. */
    TST_RC_FATAL(
        rt_vd_open(&reader, path, "qcow2", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_FORCE_SHARE, &err),
        RT_OK);
    int seen = 0;
    uint8_t back[4096];
    for (int i = 0; i < 32; i++) {
        TST_RC(rt_vd_read(reader, (uint64_t)i * table_span, back, 4096), RT_OK);
        seen += memcmp(back, data[i], 4096) == 0;
    }
    TST_RC(rt_vd_close(reader), RT_OK);
    const struct qcow2 *state = vd->priv;
    printf("\n    written back before any flush: %d of 32; L2 tables in memory: %u ", seen,
           state->l2_loaded);
    CU_ASSERT(state->l2_loaded <= 4 + 4); /* the cache, and the tables of 4 in flight */
    CU_ASSERT(seen >= 24);
    int checked = qemu_img_check_status(path, "qcow2");
    CU_ASSERT(checked == 0 || checked == 3 || checked == -1); /* leaks only */
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);

    TST_RC_FATAL(
        rt_vd_open(&reader, path, "qcow2", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_FORCE_SHARE, &err),
        RT_OK);
    for (int i = 0; i < 32; i++) {
        TST_RC(rt_vd_read(reader, (uint64_t)i * table_span, back, 4096), RT_OK);
        CU_ASSERT(memcmp(back, data[i], 4096) == 0);
    }
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(reader, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(reader), RT_OK);
}

/* 64 small writes into one unallocated block, all in flight at once: each allocates or
 * lands in the block another is allocating.  Without ordering, the whole-block write of
 * the allocation would wipe its neighbours. */
static void concurrent_into_one_block(const char *format, uint32_t open_flags, size_t skew,
                                      size_t piece, size_t stride)
{
    char path[600];
    rt_vd_t vd;
    rt_vd_queue_t q;
    enum { N = 64 };
    make_image(path, sizeof path, "one-block", format, 4 * MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd, path, format, open_flags, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_queue_create(&q, 16), RT_OK);
    static unsigned char bufs[N][4096];
    struct tracked t[N] = {{0}};
    rt_iovec_t iov[N];
    memset(model, 0, 2 * MIB);
    for (int i = 0; i < N; i++) {
        fill_random(bufs[i], piece);
        iov[i] = (rt_iovec_t){bufs[i], piece};
        uint64_t off = MIB + skew + (uint64_t)i * stride;
        memcpy(model + off, bufs[i], piece);
        TST_RC_FATAL(rt_vd_queue_write(q, vd, off, &iov[i], 1, tracked_done, &t[i]), RT_OK);
    }
    run_until_done(q, t, N);
    for (int i = 0; i < N; i++)
        TST_RC(t[i].status, RT_OK);
    TST_RC(rt_vd_read(vd, 0, scratch, 2 * MIB), RT_OK);
    CU_ASSERT(memcmp(scratch, model, 2 * MIB) == 0);
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* Each backend reorders differently (the thread pool most): run on every one. */
static void on_every_backend(uint32_t open_flags, size_t skew, size_t piece, size_t stride)
{
    static const char *const names[] = {"threads", "linux-aio", "io_uring"};
    for (int i = 0; i < 3; i++) {
        rt_aio_ctx_t ctx;
        if (rt_aio_ctx_create(&ctx, 4, tst_backend_flag(names[i])) != RT_OK)
            continue;
        rt_aio_ctx_destroy(ctx);
        setenv("RT_AIO_BACKEND", names[i], 1);
        for (int round = 0; round < 3; round++) {
            concurrent_into_one_block("vdi", open_flags, skew, piece, stride);
            concurrent_into_one_block("qcow2", open_flags, skew, piece, stride);
        }
    }
    unsetenv("RT_AIO_BACKEND");
}

static void test_concurrent_allocating_writes(void)
{
    on_every_backend(0, 17, 1000, 1000);
    /* Uncached and aligned: no read-modify-write, only the allocation to order, and
     * the device slow enough for reordering to show. */
    if (uncached_supported())
        on_every_backend(RT_VD_OPEN_NO_CACHE, 0, 4096, 4096);
}

/* Unaligned neighbours sharing sectors, uncached: each is a read-modify-write of the
 * sectors it touches, which must not run concurrently with its neighbours. */
static void test_concurrent_rmw_writes(void)
{
    if (!uncached_supported()) {
        printf("(no O_DIRECT here) ");
        return;
    }
    on_every_backend(RT_VD_OPEN_NO_CACHE, 17, 300, 300);
}

/* Many queued requests across two images, in random non-overlapping ranges per batch,
 * checked against a model for each image. */
static void test_queue_two_images(void)
{
    char paths[2][600];
    rt_vd_t vd[2];
    rt_vd_queue_t q;
    static unsigned char models[2][4 * MIB];
    static unsigned char bufs[64][65536];
    make_image(paths[0], sizeof paths[0], "q0.vdi", "vdi", 4 * MIB, 0);
    make_image(paths[1], sizeof paths[1], "q1.raw", "raw", 4 * MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd[0], paths[0], "vdi", 0, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd[1], paths[1], "raw", 0, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_queue_create(&q, 8), RT_OK); /* fewer ops than requests */
    memset(models, 0, sizeof models);
    for (int round = 0; round < 20; round++) {
        struct tracked t[64] = {{0}};
        rt_iovec_t iov[64];
        bool reading[64];
        uint64_t offs[64];
        size_t lens[64];
        /* 32 slots of 128 KiB per image: one request per slot, so none overlap. */
        for (int i = 0; i < 64; i++) {
            int img = i & 1;
            uint64_t slot = (uint64_t)(i / 2) * (128 * 1024);
            offs[i] = slot + prng() % 60000;
            lens[i] = 1 + prng() % 65535;
            reading[i] = prng() % 3 == 0;
            iov[i] = (rt_iovec_t){bufs[i], lens[i]};
            if (reading[i]) {
                TST_RC_FATAL(
                    rt_vd_queue_read(q, vd[img], offs[i], &iov[i], 1, tracked_done, &t[i]),
                    RT_OK);
            } else {
                fill_random(bufs[i], lens[i]);
                memcpy(models[img] + offs[i], bufs[i], lens[i]);
                TST_RC_FATAL(
                    rt_vd_queue_write(q, vd[img], offs[i], &iov[i], 1, tracked_done, &t[i]),
                    RT_OK);
            }
        }
        if (round % 5 == 4) {
            struct tracked f[2] = {{0}};
            run_until_done(q, t, 64);
            TST_RC(rt_vd_queue_flush(q, vd[0], tracked_done, &f[0]), RT_OK);
            TST_RC(rt_vd_queue_flush(q, vd[1], tracked_done, &f[1]), RT_OK);
            run_until_done(q, f, 2);
            TST_RC(f[0].status, RT_OK);
            TST_RC(f[1].status, RT_OK);
        }
        run_until_done(q, t, 64);
        for (int i = 0; i < 64; i++) {
            TST_RC(t[i].status, RT_OK);
            if (reading[i])
                CU_ASSERT(memcmp(bufs[i], models[i & 1] + offs[i], lens[i]) == 0);
        }
    }
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    for (int img = 0; img < 2; img++) {
        TST_RC(rt_vd_close(vd[img]), RT_OK);
        TST_RC_FATAL(rt_vd_open(&vd[img], paths[img], NULL, RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
        TST_RC(rt_vd_read(vd[img], 0, scratch, 4 * MIB), RT_OK);
        CU_ASSERT(memcmp(scratch, models[img], 4 * MIB) == 0);
        TST_RC(rt_vd_close(vd[img]), RT_OK);
    }
}

/* A newly allocated block is invisible to another reader of the file until a flush
 * commits its map entry: the metadata never runs ahead of durable data. */
static void test_metadata_waits_for_flush(void)
{
    char path[600];
    rt_vd_t writer, reader;
    unsigned char data[4096], back[4096];
    make_image(path, sizeof path, "commit.vdi", "vdi", 4 * MIB, 0);
    TST_RC_FATAL(rt_vd_open(&writer, path, "vdi", 0, NULL), RT_OK);
    fill_random(data, sizeof data);
    TST_RC(rt_vd_write(writer, 2 * MIB + 512, data, sizeof data), RT_OK);

    TST_RC_FATAL(
        rt_vd_open(&reader, path, "vdi", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_FORCE_SHARE, NULL),
        RT_OK);
    TST_RC(rt_vd_read(reader, 2 * MIB + 512, back, sizeof back), RT_OK);
    CU_ASSERT(back[0] == 0 && back[4095] == 0);
    rt_vd_extent_t ext;
    TST_RC(rt_vd_block_status(reader, 2 * MIB, MIB, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.flags & RT_VD_EXTENT_DATA, 0);
    TST_RC(rt_vd_close(reader), RT_OK);

    TST_RC(rt_vd_flush(writer), RT_OK);
    TST_RC_FATAL(
        rt_vd_open(&reader, path, "vdi", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_FORCE_SHARE, NULL),
        RT_OK);
    TST_RC(rt_vd_read(reader, 2 * MIB + 512, back, sizeof back), RT_OK);
    CU_ASSERT(memcmp(back, data, sizeof data) == 0);
    TST_RC(rt_vd_close(reader), RT_OK);
    TST_RC(rt_vd_close(writer), RT_OK);
}

/* ---------------------------------------------------------------------------------- */
/* Inspection. */

static void test_vdi_block_status_and_info(void)
{
    char path[600];
    rt_vd_t vd;
    unsigned char data[100];
    make_image(path, sizeof path, "status.vdi", "vdi", 5 * MIB + 512, 0);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, NULL), RT_OK);
    fill_random(data, sizeof data);
    TST_RC(rt_vd_write(vd, MIB + 10, data, sizeof data), RT_OK);
    TST_RC(rt_vd_write(vd, 2 * MIB + 10, data, sizeof data), RT_OK);

    rt_vd_extent_t ext;
    TST_RC(rt_vd_block_status(vd, 0, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.offset, 0);
    CU_ASSERT_EQUAL(ext.length, MIB);
    CU_ASSERT_EQUAL(ext.flags, RT_VD_EXTENT_ZERO);
    CU_ASSERT_EQUAL(ext.host_offset, UINT64_MAX);
    /* Two blocks allocated one after the other answer as one run. */
    TST_RC(rt_vd_block_status(vd, MIB, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.length, 2 * MIB);
    CU_ASSERT_EQUAL(ext.flags, RT_VD_EXTENT_DATA | RT_VD_EXTENT_ALLOCATED);
    CU_ASSERT_NOT_EQUAL(ext.host_offset, UINT64_MAX);
    TST_RC(rt_vd_block_status(vd, MIB + 5, 10, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.length, 10);
    /* The tail, clipped to the virtual size. */
    TST_RC(rt_vd_block_status(vd, 3 * MIB, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.offset + ext.length, 5 * MIB + 512);

    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_STRING_EQUAL(info.format, "vdi");
    CU_ASSERT_EQUAL(info.virtual_size, 5 * MIB + 512);
    CU_ASSERT_EQUAL(info.block_size, MIB);
    CU_ASSERT_EQUAL(info.blocks_total, 6);
    CU_ASSERT_EQUAL(info.blocks_allocated, 2);
    CU_ASSERT_STRING_EQUAL(info.variant, "dynamic");
    CU_ASSERT_FALSE(info.read_only);
    TST_RC(rt_vd_close(vd), RT_OK);
}

static void test_raw_block_status(void)
{
    char path[600];
    rt_vd_t vd;
    unsigned char data[4096];
    make_image(path, sizeof path, "holes.raw", "raw", 8 * MIB, 0);
    TST_RC_FATAL(rt_vd_open(&vd, path, "raw", 0, NULL), RT_OK);
    fill_random(data, sizeof data);
    TST_RC(rt_vd_write(vd, 4 * MIB, data, sizeof data), RT_OK);
    TST_RC(rt_vd_flush(vd), RT_OK);
    rt_vd_extent_t ext;
    /* Every field is set, whatever the caller's memory held (depth was once left as
     * it was: "backing file, depth 32765"). */
    memset(&ext, 0xa5, sizeof ext);
    TST_RC(rt_vd_block_status(vd, 4 * MIB, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_TRUE(ext.flags & RT_VD_EXTENT_DATA);
    CU_ASSERT_EQUAL(ext.host_offset, 4 * MIB);
    CU_ASSERT_EQUAL(ext.depth, 0);
    memset(&ext, 0x5a, sizeof ext);
    TST_RC(rt_vd_block_status(vd, 0, UINT64_MAX, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.depth, 0);
    if (ext.flags & RT_VD_EXTENT_DATA) {
        /* The file system does not report holes: all data is the correct fallback. */
        printf("(no SEEK_HOLE here) ");
        CU_ASSERT_EQUAL(ext.host_offset, 0);
    } else {
        CU_ASSERT_EQUAL(ext.flags, RT_VD_EXTENT_ZERO | RT_VD_EXTENT_ALLOCATED);
        CU_ASSERT_TRUE(ext.length > 0 && ext.length <= 4 * MIB);
    }
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_STRING_EQUAL(info.format, "raw");
    CU_ASSERT_EQUAL(info.virtual_size, 8 * MIB);
    CU_ASSERT_EQUAL(info.block_size, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* A raw image of odd size opens cached (any size) but not uncached. */
static void test_raw_odd_size(void)
{
    char path[600];
    rt_vd_t vd;
    rt_vd_error_t err;
    tst_path(path, sizeof path, "odd.raw");
    FILE *f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    for (int i = 0; i < 1000; i++)
        fputc(i & 0xff, f);
    fclose(f);
    TST_RC_FATAL(rt_vd_open(&vd, path, "raw", 0, NULL), RT_OK);
    unsigned char back[1000];
    TST_RC(rt_vd_read(vd, 0, back, 1000), RT_OK);
    CU_ASSERT_EQUAL(back[999], 999 & 0xff);
    TST_RC(rt_vd_write(vd, 990, "0123456789", 10), RT_OK);
    TST_RC(rt_vd_write(vd, 995, "0123456789", 10), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_close(vd), RT_OK);
    if (uncached_supported()) {
        TST_RC(rt_vd_open(&vd, path, "raw", RT_VD_OPEN_NO_CACHE, &err), RT_ERR_NOT_SUPPORTED);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "multiple"));
    }
}

int main(void)
{
    CU_pSuite api = tst_suite("contract and error paths");
    CU_pSuite data = tst_suite("data against a model");
    CU_pSuite queue = tst_suite("queued requests");
    CU_pSuite inspect = tst_suite("inspection");

    TST_ADD(api, test_open_errors);
    TST_ADD(api, test_open_not_a_disk);
    TST_ADD(api, test_create_errors);
    TST_ADD(api, test_create_qcow2_backing_name_room);
    TST_ADD(api, test_io_errors);
    TST_ADD(api, test_queue_errors);
    TST_ADD(api, test_callback_reentry);
    TST_ADD(api, test_formats_list);
    TST_ADD(api, test_driver_tables);
    TST_ADD(api, test_format_options);
    TST_ADD(api, test_driver_several_files);

    TST_ADD(data, test_model_raw_cached);
    TST_ADD(data, test_model_raw_uncached);
    TST_ADD(data, test_model_vdi_dynamic_cached);
    TST_ADD(data, test_model_vdi_dynamic_uncached);
    TST_ADD(data, test_model_vdi_static);
    TST_ADD(data, test_model_qcow2);
    TST_ADD(data, test_model_qcow2_small_clusters);
    TST_ADD(data, test_model_qcow2_tiny_l2_cache);
    TST_ADD(data, test_uncached_read_across_free_into_data);
    TST_ADD(data, test_qcow2_compressed);
    TST_ADD(data, test_qcow2_backing);
    TST_ADD(data, test_qcow2_no_backing);
    TST_ADD(data, test_vectors);

    TST_ADD(queue, test_concurrent_allocating_writes);
    TST_ADD(queue, test_concurrent_rmw_writes);
    TST_ADD(queue, test_queue_two_images);
    TST_ADD(queue, test_qcow2_metadata_writeback);
    TST_ADD(queue, test_metadata_waits_for_flush);

    TST_ADD(inspect, test_vdi_block_status_and_info);
    TST_ADD(inspect, test_raw_block_status);
    TST_ADD(inspect, test_raw_odd_size);

    return tst_run();
}
