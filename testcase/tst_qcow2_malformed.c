/*
 * Malformed QCOW2 images: every header field, header extension, table entry and file
 * length that can be wrong, one at a time, on copies of valid images made at test time
 * (versions 2 and 3; 512-byte, 4 KiB and 64 KiB clusters; with data, with compressed
 * clusters, with a backing file, and, when qemu-img is installed, with an internal
 * snapshot made by qemu-img).
 *
 * What each mutation must do, by kind:
 *
 *   REFUSED           rt_vd_open() fails with the documented status (RT_ERR_VD_CORRUPT
 *                     for a broken image, RT_ERR_NOT_SUPPORTED for a valid one using a
 *                     feature this library lacks) and a message naming the problem
 *                     (asserted on a keyword), read-only, writable and probing.
 *   WRITABLE_REFUSED  the image opens read-only (and by probing) and reads as before;
 *                     a writable open is refused (the corrupt and dirty bits).
 *   USE_FAILS         the image opens (an L2 entry is only looked at when its table is
 *                     used); reading and writing the affected cluster fail with
 *                     RT_ERR_VD_CORRUPT, and rt_vd_check() counts a corruption.
 *   CHECK_CORRUPT     the image opens and reads as before, but rt_vd_check() counts a
 *                     corruption (and so does qemu-img check when installed).
 *   OPENS             an edge the specification allows: every open succeeds, the image
 *                     reads as before and checks clean.
 *
 * In every case the file is byte for byte unchanged afterwards (a refused writable
 * open, a refused write), and once the mutated bytes are put back the same file opens
 * and reads as the valid image does: the refusal was for that field.
 *
 * The header layout, table entry bits and extension types below are the QCOW2
 * specification's (docs/interop/qcow2.txt in QEMU), written here independently of
 * src/vd/qcow2.h.
 */
#include <ctype.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <rt/time.h>
#include <rt/vd.h>

#include "tst_common.h"
#include "tst_files.h"
#include "tst_qcow2.h"
#include "tst_qemu_img.h"

/* The header layout, entry bits and extension types are in tst_qcow2.h. */

/* ---------------------------------------------------------------------------------- */
/* The valid images. */

enum image { V3_64K, V2_64K, V3_512, V3_4K_Z, V3_BACKING, QEMU_SNAP, QEMU_SNAP_LAST, IMAGES };

struct base {
    const char *file;
    uint32_t version, cluster;
    uint64_t size;
    bool present;
    char path[512];
    uint8_t *want; /* the guest contents */
    /* The layout, read back from the file. */
    uint64_t file_size, eof_cluster; /* the size, and rounded up to a cluster */
    uint32_t header_length, l1_size, rt_clusters, nb_snapshots;
    uint64_t l1_offset, rt_offset, rb_first, rb_last, l2_first, data_first;
    uint64_t feature_table, backing_format, backing_name, snapshots, snapshot_l1, snapshot_l2;
};

static struct base bases[IMAGES] = {
    [V3_64K] = {"base-v3-64k.qcow2", 3, 64 * KIB, 4 * MIB},
    [V2_64K] = {"base-v2-64k.qcow2", 2, 64 * KIB, 4 * MIB},
    [V3_512] = {"base-v3-512.qcow2", 3, 512, 2 * MIB},
    [V3_4K_Z] = {"base-v3-4k-z.qcow2", 3, 4 * KIB, 4 * MIB},
    [V3_BACKING] = {"base-v3-backing.qcow2", 3, 64 * KIB, 4 * MIB},
    [QEMU_SNAP] = {"base-qemu-snap.qcow2", 3, 64 * KIB, 4 * MIB},
    /* The same, nothing written after the snapshot: its table ends the file. */
    [QEMU_SNAP_LAST] = {"base-qemu-snap-last.qcow2", 3, 64 * KIB, 4 * MIB},
};

/* Compressed clusters of V3_4K_Z, and its one plain write. */
static const uint32_t z_clusters[] = {0, 1, 2, 3, 4, 5, 6, 7, 100};
#define Z_PLAIN_OFF (20u * 4096u + 100u)
#define Z_PLAIN_LEN 3000u

static void fail_setup(const char *what, const char *path, int rc, const char *msg)
{
    fprintf(stderr, "%s %s: %s: %s\n", what, path, rt_status_name(rc), msg ? msg : "");
    exit(1);
}

/* Writes a pattern at [off, off + len) of the open image and of its model. */
static void put_data(rt_vd_t vd, struct base *b, uint64_t off, size_t len, unsigned seed)
{
    uint8_t *buf = malloc(len);
    if (buf == NULL)
        die("no memory for", b->path);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)((off + i) * 131u + ((off + i) >> 9) * 7u + seed);
    int rc = rt_vd_write(vd, off, buf, len);
    if (rc != RT_OK)
        fail_setup("cannot write", b->path, rc, NULL);
    memcpy(b->want + off, buf, len);
    free(buf);
}

/* A cluster's worth of text that deflates to a few hundred bytes. */
static void z_cluster_bytes(uint8_t *buf, uint32_t cluster, uint32_t size)
{
    size_t at = 0;
    for (unsigned line = 0; at < size; line++) {
        char text[64];
        int n = snprintf(text, sizeof text, "cluster %u line %u: %u\n", cluster, line,
                         (line * 2654435761u) % 1000u);
        for (int i = 0; i < n && at < size; i++)
            buf[at++] = (uint8_t)text[i];
    }
}

static rt_vd_t open_or_die(struct base *b, uint32_t flags)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, b->path, "qcow2", flags | RT_VD_OPEN_ALLOW_BACKING, &err);
    if (rc != RT_OK)
        fail_setup("cannot open", b->path, rc, err.msg);
    return vd;
}

static void close_or_die(struct base *b, rt_vd_t vd)
{
    int rc = rt_vd_close(vd);
    if (rc != RT_OK)
        fail_setup("cannot close", b->path, rc, NULL);
}

static void run_or_die(const char *cmd)
{
    int status = system(cmd);
    if (status != 0) {
        fprintf(stderr, "'%s' failed (status 0x%x)\n", cmd, status);
        exit(1);
    }
}

/* Reads back where everything is: the mutations are relative to it. */
static void read_layout(struct base *b)
{
    uint8_t *f = slurp(b->path, &b->file_size);
    b->eof_cluster = (b->file_size + b->cluster - 1) / b->cluster * b->cluster;
    b->header_length = b->version == 3 ? get_be32(f + H_HEADER_LENGTH) : 72;
    b->l1_size = get_be32(f + H_L1_SIZE);
    b->l1_offset = get_be64(f + H_L1_OFFSET);
    b->rt_offset = get_be64(f + H_RT_OFFSET);
    b->rt_clusters = get_be32(f + H_RT_CLUSTERS);
    b->nb_snapshots = get_be32(f + H_NB_SNAPSHOTS);
    b->snapshots = get_be64(f + H_SNAPSHOTS_OFFSET);
    b->backing_name = get_be64(f + H_BACKING_OFFSET);
    b->rb_first = get_be64(f + b->rt_offset);
    for (uint64_t i = 0; i < (uint64_t)b->rt_clusters * b->cluster / 8; i++) {
        uint64_t rb = get_be64(f + b->rt_offset + 8 * i);
        if (rb > b->rb_last)
            b->rb_last = rb;
    }
    b->l2_first = get_be64(f + b->l1_offset) & OFFSET_MASK;
    b->data_first = get_be64(f + b->l2_first) & OFFSET_MASK;
    uint32_t end = b->backing_name ? (uint32_t)b->backing_name : b->cluster;
    for (uint32_t at = b->header_length; at + 8 <= end;) {
        uint32_t type = get_be32(f + at), len = get_be32(f + at + 4);
        if (type == 0)
            break;
        if (type == EXT_FEATURE_NAME)
            b->feature_table = at;
        if (type == EXT_BACKING_FMT)
            b->backing_format = at;
        at += 8 + ((len + 7) & ~7u);
    }
    if (b->nb_snapshots > 0) {
        b->snapshot_l1 = get_be64(f + b->snapshots);
        b->snapshot_l2 = get_be64(f + b->snapshot_l1) & OFFSET_MASK;
    }
    free(f);
    /* What the mutations assume. */
    bool ok = b->l2_first != 0 && b->l2_first % b->cluster == 0 && b->rb_first != 0 &&
              (b->version == 2 || b->feature_table != 0);
    if (b->version == 3 && (b - bases) < QEMU_SNAP && b->header_length != 112)
        ok = false;
    if ((b - bases) != V3_4K_Z && (b->data_first == 0 || b->data_first % b->cluster != 0))
        ok = false;
    if ((b - bases) == V3_BACKING && (b->backing_name == 0 || b->backing_format == 0))
        ok = false;
    if ((b - bases) >= QEMU_SNAP && (b->nb_snapshots != 1 || b->snapshot_l1 == 0))
        ok = false;
    if (!ok) {
        fprintf(stderr, "%s: unexpected layout (L1 0x%llx, L2 0x%llx, data 0x%llx)\n", b->path,
                (unsigned long long)b->l1_offset, (unsigned long long)b->l2_first,
                (unsigned long long)b->data_first);
        exit(1);
    }
}

static void create_images(void)
{
    rt_vd_error_t err;
    int rc;
    for (int i = 0; i < IMAGES; i++) {
        struct base *b = &bases[i];
        tst_path(b->path, sizeof b->path, b->file);
        b->want = calloc(1, (size_t)b->size);
        if (b->want == NULL)
            die("no memory for", b->path);
    }

    /* Plain images with data. */
    const enum image plain[] = {V3_64K, V2_64K, V3_512};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        struct base *b = &bases[plain[i]];
        rt_vd_create_opts_t opts = {
            .size = b->size, .block_size = b->cluster, .version = b->version};
        if ((rc = rt_vd_create(b->path, "qcow2", &opts, &err)) != RT_OK)
            fail_setup("cannot create", b->path, rc, err.msg);
        rt_vd_t vd = open_or_die(b, 0);
        if (b->cluster == 512) {
            /* Hundreds of clusters: several refcount blocks, the last one late. */
            put_data(vd, b, 0, 300 * KIB, 1);
            put_data(vd, b, MIB + 100, 5000, 2);
        } else {
            put_data(vd, b, 0, 100000, 1);
            put_data(vd, b, 3 * MIB + 1234, 70000, 2);
        }
        put_data(vd, b, b->size - 4096, 4096, 3);
        close_or_die(b, vd);
        b->present = true;
    }

    /* Compressed clusters and one plain write. */
    struct base *z = &bases[V3_4K_Z];
    rt_vd_create_opts_t zopts = {.size = z->size, .block_size = z->cluster, .version = 3};
    if ((rc = rt_vd_create(z->path, "qcow2", &zopts, &err)) != RT_OK)
        fail_setup("cannot create", z->path, rc, err.msg);
    rt_vd_t vd = open_or_die(z, 0);
    for (size_t i = 0; i < sizeof z_clusters / sizeof z_clusters[0]; i++) {
        uint8_t *at = z->want + (uint64_t)z_clusters[i] * z->cluster;
        z_cluster_bytes(at, z_clusters[i], z->cluster);
        rc = rt_vd_write_compressed(vd, (uint64_t)z_clusters[i] * z->cluster, at, z->cluster);
        if (rc != RT_OK)
            fail_setup("cannot write compressed", z->path, rc, NULL);
    }
    put_data(vd, z, Z_PLAIN_OFF, Z_PLAIN_LEN, 4);
    close_or_die(z, vd);
    z->present = true;

    /* An overlay on V3_64K (named relatively: the mutants live beside it). */
    struct base *o = &bases[V3_BACKING];
    rt_vd_create_opts_t oopts = {.version = 3,
                                 .block_size = o->cluster,
                                 .backing_file = bases[V3_64K].file,
                                 .backing_format = "qcow2"};
    if ((rc = rt_vd_create(o->path, "qcow2", &oopts, &err)) != RT_OK)
        fail_setup("cannot create", o->path, rc, err.msg);
    memcpy(o->want, bases[V3_64K].want, (size_t)o->size);
    vd = open_or_die(o, 0);
    put_data(vd, o, 3 * 4096, 8192, 5); /* a partial cluster: the rest from the backing file */
    put_data(vd, o, 2 * MIB, 65536, 6);
    close_or_die(o, vd);
    o->present = true;

    /* qemu-img's own image with an internal snapshot, written on both sides of it. */
    for (int i = QEMU_SNAP; i <= QEMU_SNAP_LAST && access(QEMU_IMG, X_OK) == 0; i++) {
        struct base *q = &bases[i];
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "%s create -q -f qcow2 '%s' %llu", QEMU_IMG, q->path,
                 (unsigned long long)q->size);
        run_or_die(cmd);
        vd = open_or_die(q, 0);
        put_data(vd, q, 0, 100000, 7);
        put_data(vd, q, 2 * MIB, 4096, 8);
        close_or_die(q, vd);
        snprintf(cmd, sizeof cmd, "%s snapshot -c snap1 '%s'", QEMU_IMG, q->path);
        run_or_die(cmd);
        if (i == QEMU_SNAP) {
            vd = open_or_die(q, 0);
            put_data(vd, q, 50000, 20000, 9); /* copy-on-write of shared clusters */
            put_data(vd, q, 3 * MIB, 4096, 10);
            close_or_die(q, vd);
        }
        q->present = true;
    }
    if (access(QEMU_IMG, X_OK) != 0) {
        printf("note: %s not installed: no qemu-made image with an internal snapshot, and no "
               "cross-check with qemu-img check\n",
               QEMU_IMG);
    }

    for (int i = 0; i < IMAGES; i++)
        if (bases[i].present)
            read_layout(&bases[i]);
}

/* Reads the whole guest disk and compares it with the model. */
static bool reads_as_expected(rt_vd_t vd, const struct base *b)
{
    uint8_t *buf = malloc((size_t)b->size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    int rc = rt_vd_read(vd, 0, buf, (size_t)b->size);
    TST_RC(rc, RT_OK);
    bool same = rc == RT_OK && memcmp(buf, b->want, (size_t)b->size) == 0;
    free(buf);
    return same;
}

static void test_valid_images(void)
{
    for (int i = 0; i < IMAGES; i++) {
        struct base *b = &bases[i];
        if (!b->present)
            continue;
        const char *formats[] = {"qcow2", NULL, "qcow2"};
        const uint32_t flags[] = {RT_VD_OPEN_READ_ONLY, RT_VD_OPEN_READ_ONLY, 0};
        for (int f = 0; f < 3; f++) {
            rt_vd_t vd = RT_VD_NIL;
            rt_vd_error_t err;
            rt_vd_info_t info;
            rt_vd_check_result_t res;
            int rc =
                rt_vd_open(&vd, b->path, formats[f], flags[f] | RT_VD_OPEN_ALLOW_BACKING, &err);
            if (rc != RT_OK)
                fprintf(stderr, "\n  %s: %s: %s", b->file, rt_status_name(rc), err.msg);
            TST_RC_FATAL(rc, RT_OK);
            TST_RC(rt_vd_get_info(vd, &info), RT_OK);
            CU_ASSERT_STRING_EQUAL(info.format, "qcow2");
            CU_ASSERT_EQUAL(info.virtual_size, b->size);
            CU_ASSERT_EQUAL(info.block_size, b->cluster);
            CU_ASSERT_STRING_EQUAL(info.variant, b->version == 2 ? "v2" : "v3");
            CU_ASSERT(reads_as_expected(vd, b));
            TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
            if (res.corruptions + res.leaks != 0)
                fprintf(stderr, "\n  %s: check: %s", b->file, res.first_problem);
            CU_ASSERT_EQUAL(res.corruptions, 0);
            CU_ASSERT_EQUAL(res.leaks, 0);
            TST_RC(rt_vd_close(vd), RT_OK);
        }
        int q = qemu_img_check_status(b->path, "qcow2");
        if (q > 0)
            CU_ASSERT_EQUAL(qemu_img_clean_as(b->path, "qcow2"), 1);
    }

    /* The overlay names another file: refused unless that is allowed. */
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    TST_RC(rt_vd_open(&vd, bases[V3_BACKING].path, "qcow2", RT_VD_OPEN_READ_ONLY, &err),
           RT_ERR_ACCESS_DENIED);
    CU_ASSERT_PTR_NULL(vd);
    CU_ASSERT(mentions(err.msg, bases[V3_64K].file));
    if (!bases[QEMU_SNAP].present)
        printf("\n  note: %s not installed: snapshot image and qemu-img cross-checks skipped ",
               QEMU_IMG);
}

/* ---------------------------------------------------------------------------------- */
/* Mutations. */

/* What a patch's offset or value is relative to (the image's own layout). */
enum rel {
    ABS,
    CLUSTER,      /* the cluster size */
    L1,           /* the L1 table */
    RT,           /* the refcount table */
    RB,           /* the first refcount block */
    RB_LAST,      /* the last refcount block in the file */
    L2,           /* the L2 table of L1 entry 0 */
    DATA,         /* the data cluster of L2 entry 0 */
    EOF_CLUSTER,  /* the file's end, rounded up to a cluster */
    FEATURES,     /* the feature name table extension (its type field) */
    BACKING_FMT,  /* the backing format extension (its type field) */
    BACKING_NAME, /* the backing file name */
    SNAPSHOTS,    /* the snapshot table */
    SNAPSHOT_L1,  /* the first snapshot's L1 table */
    SNAPSHOT_L2,  /* the L2 table its entry 0 names */
    RT_TO_EOF,    /* clusters from the refcount table to EOF_CLUSTER */
};

/* SETREF: the refcount (16 bits, first refcount block) of the cluster at the offset. */
enum op { NONE, SET8, SET16, SET32, SET64, TEXT, TRUNC, SETREF };

struct patch {
    enum op op;
    enum rel at_rel;
    uint64_t at;
    enum rel value_rel;
    uint64_t value;
    const char *text; /* TEXT: written with its NUL */
};

/* Patches, by what they write where. */
/* clang-format off */
#define H32(f, v)         {SET32, ABS, (f), ABS, (v), NULL}   /* header field := v */
#define H64(f, v)         {SET64, ABS, (f), ABS, (v), NULL}
#define H64R(f, r, v)     {SET64, ABS, (f), (r), (v), NULL}   /* := layout r + v */
#define AT8(r, o, v)      {SET8, (r), (o), ABS, (v), NULL}    /* at layout r + o */
#define AT16(r, o, v)     {SET16, (r), (o), ABS, (v), NULL}
#define AT32(r, o, v)     {SET32, (r), (o), ABS, (v), NULL}
#define AT64(r, o, vr, v) {SET64, (r), (o), (vr), (v), NULL}
#define ATTEXT(r, o, s)   {TEXT, (r), (o), ABS, 0, (s)}
#define L1E(i, r, v)      AT64(L1, 8u * (i), (r), (v))        /* L1 entry i := r + v */
#define RTE(i, r, v)      AT64(RT, 8u * (i), (r), (v))
#define L2E(i, r, v)      AT64(L2, 8u * (i), (r), (v))
#define TRUNCATE(r, v)    {TRUNC, ABS, 0, (r), (v), NULL}     /* file length := r + v */
#define REF0(r)           {SETREF, (r), 0, ABS, 0, NULL}      /* refcount of r's cluster := 0 */
/* clang-format on */

enum expect { REFUSED, WRITABLE_REFUSED, USE_FAILS, CHECK_CORRUPT, OPENS };
/* What probing (format NULL) does with a REFUSED image. */
enum probe { PROBE_SAME, PROBE_RAW };

struct mutation {
    const char *name;
    enum image image;
    struct patch p[4];
    enum expect expect;
    int want;            /* REFUSED, WRITABLE_REFUSED: the open's status */
    const char *keyword; /* ... and a word of its message */
    enum probe probe;
    uint64_t guest;       /* USE_FAILS: a guest offset in the affected cluster */
    bool contents_differ; /* CHECK_CORRUPT: the guest sees other data now */
};

static uint64_t base_of(const struct base *b, enum rel rel)
{
    switch (rel) {
    case ABS: return 0;
    case CLUSTER: return b->cluster;
    case L1: return b->l1_offset;
    case RT: return b->rt_offset;
    case RB: return b->rb_first;
    case RB_LAST: return b->rb_last;
    case L2: return b->l2_first;
    case DATA: return b->data_first;
    case EOF_CLUSTER: return b->eof_cluster;
    case FEATURES: return b->feature_table;
    case BACKING_FMT: return b->backing_format;
    case BACKING_NAME: return b->backing_name;
    case SNAPSHOTS: return b->snapshots;
    case SNAPSHOT_L1: return b->snapshot_l1;
    case SNAPSHOT_L2: return b->snapshot_l2;
    case RT_TO_EOF: return (b->eof_cluster - b->rt_offset) / b->cluster;
    }
    return 0;
}

static unsigned width(const struct patch *p)
{
    switch (p->op) {
    case SET8: return 1;
    case SET16:
    case SETREF: return 2;
    case SET32: return 4;
    case SET64: return 8;
    case TEXT: return (unsigned)strlen(p->text) + 1;
    default: return 0;
    }
}

/* Where a patch writes. */
static uint64_t patch_at(const struct base *b, const struct patch *p)
{
    uint64_t at = base_of(b, p->at_rel) + p->at;
    return p->op == SETREF ? b->rb_first + 2 * (at / b->cluster) : at;
}

static void apply(const char *path, const struct base *b, const struct patch *p)
{
    uint64_t at = patch_at(b, p);
    uint64_t value = base_of(b, p->value_rel) + p->value;
    switch (p->op) {
    case NONE: break;
    case SET8:
    case SET16:
    case SET32:
    case SET64:
    case SETREF: patch_be(path, at, value, width(p)); break;
    case TEXT: patch(path, at, p->text, width(p)); break;
    case TRUNC: resize(path, value); break;
    }
}

static const char *open_kind(const char *format, uint32_t flags)
{
    return format == NULL ? "probing" : (flags & RT_VD_OPEN_READ_ONLY) ? "read-only" : "writable";
}

/* One open that must be refused as the mutation says. */
static void expect_refused(const struct mutation *m, const char *path, const char *format,
                           uint32_t flags)
{
    rt_vd_t vd = (rt_vd_t)(uintptr_t)1; /* must be reset to NIL */
    rt_vd_error_t err;
    memset(&err, 0, sizeof err);
    int rc = rt_vd_open(&vd, path, format, flags | RT_VD_OPEN_ALLOW_BACKING, &err);
    if (rc != m->want || !mentions(err.msg, m->keyword))
        fprintf(stderr, "\n  %s (%s open): %s \"%s\", expected %s naming \"%s\"", m->name,
                open_kind(format, flags), rt_status_name(rc), err.msg, rt_status_name(m->want),
                m->keyword);
    CU_ASSERT_EQUAL(rc, m->want);
    if (getenv("TST_QCOW2_VERBOSE") != NULL)
        printf("\n    %-32s %-9s %s: %s", m->name, open_kind(format, flags), rt_status_name(rc),
               err.msg);
    if (rc == RT_OK) {
        rt_vd_close(vd);
        return;
    }
    CU_ASSERT_PTR_NULL(vd);
    CU_ASSERT(mentions(err.msg, m->keyword));
}

/* One open that must succeed, the image reading as the valid one (unless @a skip_read);
 * returns the handle. */
static rt_vd_t expect_opens(const struct mutation *m, const char *path, const char *format,
                            uint32_t flags, bool read_all)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    memset(&err, 0, sizeof err);
    int rc = rt_vd_open(&vd, path, format, flags | RT_VD_OPEN_ALLOW_BACKING, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  %s (%s open): %s \"%s\", expected to open", m->name,
                open_kind(format, flags), rt_status_name(rc), err.msg);
    CU_ASSERT_EQUAL(rc, RT_OK);
    if (rc != RT_OK)
        return RT_VD_NIL;
    if (read_all && !reads_as_expected(vd, &bases[m->image])) {
        fprintf(stderr, "\n  %s (%s open): the guest contents changed", m->name,
                open_kind(format, flags));
        CU_FAIL("guest contents changed");
    }
    return vd;
}

static void expect_check_corrupt(const struct mutation *m, rt_vd_t vd)
{
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    if (res.corruptions == 0)
        fprintf(stderr, "\n  %s: rt_vd_check found no corruption (%llu leaks, \"%s\")", m->name,
                (unsigned long long)res.leaks, res.first_problem);
    CU_ASSERT(res.corruptions > 0);
    CU_ASSERT(res.first_problem[0] != '\0');
}

static void run_use_fails(const struct mutation *m, const char *path)
{
    const struct base *b = &bases[m->image];
    uint64_t cluster_off = m->guest / b->cluster * b->cluster;
    uint8_t *buf = calloc(1, b->cluster);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    const char *formats[] = {"qcow2", NULL};
    for (int f = 0; f < 2; f++) {
        rt_vd_t vd = expect_opens(m, path, formats[f], RT_VD_OPEN_READ_ONLY, false);
        if (vd == RT_VD_NIL)
            continue;
        int rc = rt_vd_read(vd, cluster_off, buf, b->cluster);
        if (rc != RT_ERR_VD_CORRUPT)
            fprintf(stderr, "\n  %s: read at %llu: %s, expected RT_ERR_VD_CORRUPT", m->name,
                    (unsigned long long)cluster_off, rt_status_name(rc));
        CU_ASSERT_EQUAL(rc, RT_ERR_VD_CORRUPT);
        /* Again: a refused table or cluster is not cached as good. */
        TST_RC(rt_vd_read(vd, m->guest / 512 * 512, buf, 512), RT_ERR_VD_CORRUPT);
        if (f == 0)
            expect_check_corrupt(m, vd);
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    rt_vd_t vd = expect_opens(m, path, "qcow2", 0, false);
    if (vd != RT_VD_NIL) {
        memset(buf, 0x5a, b->cluster);
        int rc = rt_vd_write(vd, m->guest / 512 * 512, buf, 512);
        if (rc != RT_ERR_VD_CORRUPT)
            fprintf(stderr, "\n  %s: write at %llu: %s, expected RT_ERR_VD_CORRUPT", m->name,
                    (unsigned long long)m->guest, rt_status_name(rc));
        CU_ASSERT_EQUAL(rc, RT_ERR_VD_CORRUPT);
        TST_RC(rt_vd_write(vd, cluster_off, buf, b->cluster), RT_ERR_VD_CORRUPT);
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    free(buf);
}

static void run_mutation(const struct mutation *m)
{
    const struct base *b = &bases[m->image];
    if (!b->present)
        return;
    char path[512];
    char name[100];
    snprintf(name, sizeof name, "mutant-%s.qcow2", m->name);
    for (char *c = name; *c != '\0'; c++)
        if (*c == ' ' || *c == '/')
            *c = '-';
    tst_path(path, sizeof path, name);
    copy_file(b->path, path);
    bool truncated = false;
    for (int i = 0; i < 4; i++) {
        apply(path, b, &m->p[i]);
        truncated |= m->p[i].op == TRUNC;
    }

    uint64_t before_size = 0, after_size = 0;
    uint8_t *before = slurp(path, &before_size);

    switch (m->expect) {
    case REFUSED:
        expect_refused(m, path, "qcow2", RT_VD_OPEN_READ_ONLY);
        expect_refused(m, path, "qcow2", 0);
        if (m->probe == PROBE_SAME) {
            expect_refused(m, path, NULL, RT_VD_OPEN_READ_ONLY);
        } else {
            /* Without a QCOW2 magic, the bytes are a raw image. */
            rt_vd_t vd = expect_opens(m, path, NULL, RT_VD_OPEN_READ_ONLY, false);
            rt_vd_info_t info;
            if (vd != RT_VD_NIL) {
                TST_RC(rt_vd_get_info(vd, &info), RT_OK);
                CU_ASSERT_STRING_EQUAL(info.format, "raw");
                CU_ASSERT_EQUAL(info.virtual_size, before_size / 512 * 512);
                rt_vd_close(vd);
            }
        }
        break;
    case WRITABLE_REFUSED: {
        rt_vd_t vd = expect_opens(m, path, "qcow2", RT_VD_OPEN_READ_ONLY, true);
        rt_vd_close(vd);
        vd = expect_opens(m, path, NULL, RT_VD_OPEN_READ_ONLY, true);
        rt_vd_close(vd);
        expect_refused(m, path, "qcow2", 0);
        break;
    }
    case USE_FAILS: run_use_fails(m, path); break;
    case OPENS: {
        const char *formats[] = {"qcow2", NULL, "qcow2"};
        const uint32_t flags[] = {RT_VD_OPEN_READ_ONLY, RT_VD_OPEN_READ_ONLY, 0};
        for (int f = 0; f < 3; f++) {
            rt_vd_t vd = expect_opens(m, path, formats[f], flags[f], true);
            rt_vd_check_result_t res;
            if (vd == RT_VD_NIL)
                continue;
            TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
            if (res.corruptions + res.leaks != 0)
                fprintf(stderr, "\n  %s: check: %s", m->name, res.first_problem);
            CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
            TST_RC(rt_vd_close(vd), RT_OK);
        }
        break;
    }
    case CHECK_CORRUPT: {
        rt_vd_t vd = expect_opens(m, path, NULL, RT_VD_OPEN_READ_ONLY, !m->contents_differ);
        if (vd != RT_VD_NIL) {
            expect_check_corrupt(m, vd);
            rt_vd_close(vd);
        }
        int q = qemu_img_check_status(path, "qcow2");
        if (q == 0 || q == 3)
            fprintf(stderr, "\n  %s: qemu-img check finds no corruption (status %d)", m->name, q);
        CU_ASSERT(q != 0 && q != 3);
        break;
    }
    }

    /* Refusing an image (an open, a read or a write) changes nothing in the file. */
    uint8_t *after = slurp(path, &after_size);
    CU_ASSERT_EQUAL(after_size, before_size);
    if (after_size != before_size || memcmp(before, after, (size_t)before_size) != 0) {
        fprintf(stderr, "\n  %s: the refusal changed the file", m->name);
        CU_FAIL("refusal changed the file");
    }
    free(before);
    free(after);
    if (truncated || m->probe == PROBE_RAW)
        return;

    /* Put the bytes back: the same file opens and reads as the valid image. */
    uint64_t orig_size = 0;
    uint8_t *orig = slurp(b->path, &orig_size);
    for (int i = 3; i >= 0; i--) {
        const struct patch *p = &m->p[i];
        uint64_t at = patch_at(b, p);
        if (p->op != NONE && at < orig_size)
            patch(path, at, orig + at,
                  (size_t)(orig_size - at < width(p) ? orig_size - at : width(p)));
    }
    free(orig);
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_ALLOW_BACKING, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  %s undone: %s \"%s\"", m->name, rt_status_name(rc), err.msg);
    CU_ASSERT_EQUAL(rc, RT_OK);
    if (rc == RT_OK) {
        CU_ASSERT(reads_as_expected(vd, b));
        rt_vd_close(vd);
    }
    unlink(path);
}

static void run_table(const struct mutation *table, size_t n)
{
    for (size_t i = 0; i < n; i++)
        run_mutation(&table[i]);
}

#define RUN(table) run_table((table), sizeof(table) / sizeof((table)[0]))

/* Table rows: the patches come last. */
#define BAD(name, image, want, keyword, ...)                                                       \
    {                                                                                              \
        name, image, {__VA_ARGS__}, REFUSED, want, keyword, PROBE_SAME, 0, false                   \
    }
#define BAD_RAW(name, image, want, keyword, ...)                                                   \
    {                                                                                              \
        name, image, {__VA_ARGS__}, REFUSED, want, keyword, PROBE_RAW, 0, false                    \
    }
#define RO_ONLY(name, image, want, keyword, ...)                                                   \
    {                                                                                              \
        name, image, {__VA_ARGS__}, WRITABLE_REFUSED, want, keyword, PROBE_SAME, 0, false          \
    }
#define IN_USE(name, image, guest, ...)                                                            \
    {                                                                                              \
        name, image, {__VA_ARGS__}, USE_FAILS, RT_OK, "", PROBE_SAME, guest, false                 \
    }
#define VALID(name, image, ...)                                                                    \
    {                                                                                              \
        name, image, {__VA_ARGS__}, OPENS, RT_OK, "", PROBE_SAME, 0, false                         \
    }
#define CHECKED(name, image, contents_differ, ...)                                                 \
    {                                                                                              \
        name, image, {__VA_ARGS__}, CHECK_CORRUPT, RT_OK, "", PROBE_SAME, 0, contents_differ       \
    }

#define CORRUPT     RT_ERR_VD_CORRUPT
#define UNSUPPORTED RT_ERR_NOT_SUPPORTED

static void test_header_fields(void)
{
    static const struct mutation table[] = {
        BAD_RAW("magic", V3_64K, CORRUPT, "magic", H32(H_MAGIC, 0x514649fa)),
        BAD_RAW("magic zero", V2_64K, CORRUPT, "magic", H32(H_MAGIC, 0)),
        BAD("version 1", V3_64K, UNSUPPORTED, "version", H32(H_VERSION, 1)),
        BAD("version 4", V3_64K, UNSUPPORTED, "version", H32(H_VERSION, 4)),
        BAD("version 0", V2_64K, UNSUPPORTED, "version", H32(H_VERSION, 0)),
        BAD("cluster bits 8", V3_64K, CORRUPT, "cluster bits", H32(H_CLUSTER_BITS, 8)),
        BAD("cluster bits 22", V3_64K, CORRUPT, "cluster bits", H32(H_CLUSTER_BITS, 22)),
        BAD("cluster bits max", V3_64K, CORRUPT, "cluster bits", H32(H_CLUSTER_BITS, 0xffffffff)),
        BAD("cluster bits 0", V2_64K, CORRUPT, "cluster bits", H32(H_CLUSTER_BITS, 0)),
        BAD("header length 96", V3_64K, CORRUPT, "header length", H32(H_HEADER_LENGTH, 96)),
        BAD("header length 0", V3_64K, CORRUPT, "header length", H32(H_HEADER_LENGTH, 0)),
        BAD("header length odd", V3_64K, CORRUPT, "header length", H32(H_HEADER_LENGTH, 113)),
        BAD("header length past cluster", V3_64K, CORRUPT, "header length",
            H32(H_HEADER_LENGTH, 64 * KIB + 8)),
        BAD("header length past 512 cluster", V3_512, CORRUPT, "header length",
            H32(H_HEADER_LENGTH, 520)),
        BAD("header length max", V3_512, CORRUPT, "header length",
            H32(H_HEADER_LENGTH, 0xfffffff8)),
        BAD("refcount order 7", V3_64K, CORRUPT, "refcount order", H32(H_REFCOUNT_ORDER, 7)),
        BAD("refcount order max", V3_512, CORRUPT, "refcount order",
            H32(H_REFCOUNT_ORDER, 0xffffffff)),
        BAD("crypt aes", V3_64K, UNSUPPORTED, "encryption", H32(H_CRYPT, 1)),
        BAD("crypt luks", V3_64K, UNSUPPORTED, "encryption", H32(H_CRYPT, 2)),
        BAD("crypt aes v2", V2_64K, UNSUPPORTED, "encryption", H32(H_CRYPT, 1)),
        BAD("crypt 99", V3_512, UNSUPPORTED, "encryption", H32(H_CRYPT, 99)),
    };
    RUN(table);
}

static void test_sizes_and_tables(void)
{
    static const struct mutation table[] = {
        BAD("size 2^62", V3_64K, CORRUPT, "virtual size", H64(H_SIZE, 1ull << 62)),
        BAD("size max", V2_64K, CORRUPT, "virtual size", H64(H_SIZE, UINT64_MAX)),
        /* 1 TiB needs 2048 L1 entries of 512 MiB; the image has 1. */
        BAD("size beyond l1", V3_64K, CORRUPT, "L1 table", H64(H_SIZE, 1ull << 40)),
        BAD("l1 size 0", V3_64K, CORRUPT, "L1 table", H32(H_L1_SIZE, 0)),
        BAD("l1 size short", V3_512, CORRUPT, "L1 table", H32(H_L1_SIZE, 63)),
        /* 40 MB of L1 table. */
        BAD("l1 size huge", V3_64K, CORRUPT, "L1 table", H32(H_L1_SIZE, 5000000)),
        /* l1_size * 8 is 2^32 + 8: 8 in 32-bit arithmetic. */
        BAD("l1 size wraps", V3_64K, CORRUPT, "L1 table", H32(H_L1_SIZE, 0x20000001)),
        BAD("l1 size max", V2_64K, CORRUPT, "L1 table", H32(H_L1_SIZE, 0xffffffff)),
        /* Big enough to read past the end of the file from the L1 offset. */
        BAD("l1 size past eof", V3_512, CORRUPT, "L1 table", H32(H_L1_SIZE, 100000)),
        BAD("l1 offset unaligned", V3_64K, CORRUPT, "L1 table offset", H64R(H_L1_OFFSET, L1, 512)),
        BAD("l1 offset unaligned 512", V3_512, CORRUPT, "L1 table offset",
            H64R(H_L1_OFFSET, L1, 8)),
        BAD("l1 offset 0", V3_64K, CORRUPT, "L1 table offset", H64(H_L1_OFFSET, 0)),
        BAD("l1 offset past eof", V3_64K, CORRUPT, "L1 table offset",
            H64R(H_L1_OFFSET, EOF_CLUSTER, 0)),
        BAD("l1 offset far", V2_64K, CORRUPT, "L1 table offset", H64(H_L1_OFFSET, 1ull << 55)),
        BAD("l1 offset max", V2_64K, CORRUPT, "L1 table offset",
            H64(H_L1_OFFSET, 0xffffffffffff0000ull)),
        BAD("rt offset unaligned", V3_64K, CORRUPT, "refcount table offset",
            H64R(H_RT_OFFSET, RT, 512)),
        BAD("rt offset 0", V3_64K, CORRUPT, "refcount table offset", H64(H_RT_OFFSET, 0)),
        BAD("rt offset past eof", V3_64K, CORRUPT, "refcount table offset",
            H64R(H_RT_OFFSET, EOF_CLUSTER, 64 * KIB)),
        BAD("rt offset max", V2_64K, CORRUPT, "refcount table offset",
            H64(H_RT_OFFSET, 0xffffffffffff0000ull)),
        BAD("rt clusters 0", V3_64K, CORRUPT, "refcount table", H32(H_RT_CLUSTERS, 0)),
        BAD("rt clusters huge", V3_64K, CORRUPT, "refcount table", H32(H_RT_CLUSTERS, 0xffffffff)),
        /* 8 MiB of refcount table is the limit; one cluster more. */
        BAD("rt clusters above limit", V3_64K, CORRUPT, "refcount table", H32(H_RT_CLUSTERS, 129)),
        BAD("rt clusters past eof", V3_64K, CORRUPT, "refcount table", H32(H_RT_CLUSTERS, 40)),
        BAD("rt clusters past eof 512", V3_512, CORRUPT, "refcount table",
            H32(H_RT_CLUSTERS, 16000)),
        /* Reaching over the other structures (to the end of the file, and one cluster
         * past it). */
        BAD("rt to eof", V3_64K, CORRUPT, "overlaps", {SET32, ABS, H_RT_CLUSTERS, RT_TO_EOF, 0, NULL}),
        BAD("rt one past eof", V3_512, CORRUPT, "refcount table",
            {SET32, ABS, H_RT_CLUSTERS, RT_TO_EOF, 1, NULL}),
        BAD("l1 over rt", V3_64K, CORRUPT, "overlaps", H64R(H_L1_OFFSET, RT, 0)),
        BAD("rt over l1", V2_64K, CORRUPT, "overlaps", H64R(H_RT_OFFSET, L1, 0)),
        BAD("rt over header", V3_512, CORRUPT, "refcount table", H64(H_RT_OFFSET, 0)),
        BAD("snapshots huge", V3_64K, CORRUPT, "snapshot", H32(H_NB_SNAPSHOTS, 0x7fffffff)),
        BAD("snapshots max", V2_64K, CORRUPT, "snapshot", H32(H_NB_SNAPSHOTS, 0xffffffff)),
        BAD("snapshot offset unaligned", V3_64K, CORRUPT, "snapshot", H32(H_NB_SNAPSHOTS, 1),
            H64R(H_SNAPSHOTS_OFFSET, L1, 512)),
        BAD("snapshot offset past eof", V3_64K, CORRUPT, "snapshot", H32(H_NB_SNAPSHOTS, 1),
            H64R(H_SNAPSHOTS_OFFSET, EOF_CLUSTER, 0)),
    };
    RUN(table);
}

static void test_features(void)
{
    static const struct mutation table[] = {
        /* Bit 5 with the feature name table's type made unknown (so: no table). */
        BAD("unknown bit 5", V3_64K, UNSUPPORTED, "bit 5", H64(H_INCOMPATIBLE, 1ull << 5),
            AT32(FEATURES, 0, 0x12345678)),
        /* Bit 5 named by the table (its last entry rewritten). */
        BAD("named bit 5", V3_64K, UNSUPPORTED, "frobnicated blocks",
            H64(H_INCOMPATIBLE, 1ull << 5), AT8(FEATURES, 8 + 7 * 48, 0),
            AT8(FEATURES, 8 + 7 * 48 + 1, 5),
            ATTEXT(FEATURES, 8 + 7 * 48 + 2, "frobnicated blocks")),
        BAD("unknown bit 63", V3_512, UNSUPPORTED, "bit 63", H64(H_INCOMPATIBLE, 1ull << 63)),
        BAD("data file bit", V3_64K, UNSUPPORTED, "external data file",
            H64(H_INCOMPATIBLE, 1ull << 2)),
        BAD("data file bit no table", V3_64K, UNSUPPORTED, "external data file",
            H64(H_INCOMPATIBLE, 1ull << 2), AT32(FEATURES, 0, 0x12345678)),
        BAD("extended l2 bit", V3_64K, UNSUPPORTED, "extended L2", H64(H_INCOMPATIBLE, 1ull << 4)),
        BAD("extended l2 bit no table", V3_512, UNSUPPORTED, "extended L2",
            H64(H_INCOMPATIBLE, 1ull << 4), AT32(FEATURES, 0, 0x12345678)),
        BAD("zstd", V3_64K, UNSUPPORTED, "zstd", H64(H_INCOMPATIBLE, 1ull << 3),
            AT8(ABS, H_COMPRESSION_TYPE, 1)),
        BAD("compression type 7", V3_64K, UNSUPPORTED, "compression type",
            H64(H_INCOMPATIBLE, 1ull << 3), AT8(ABS, H_COMPRESSION_TYPE, 7)),
        /* A type with no feature bit to announce it: QEMU refuses the image too. */
        BAD("compression type without bit", V3_64K, CORRUPT, "feature bit",
            AT8(ABS, H_COMPRESSION_TYPE, 1)),
        RO_ONLY("corrupt bit", V3_64K, CORRUPT, "corrupt", H64(H_INCOMPATIBLE, 1ull << 1)),
        RO_ONLY("dirty bit", V3_64K, UNSUPPORTED, "dirty", H64(H_INCOMPATIBLE, 1ull << 0)),
        RO_ONLY("dirty bit 512", V3_512, UNSUPPORTED, "dirty", H64(H_INCOMPATIBLE, 1ull << 0)),
    };
    RUN(table);
}

static void test_extensions_and_backing(void)
{
    static const struct mutation table[] = {
        BAD("backing offset past cluster", V3_BACKING, CORRUPT, "backing file name",
            H64R(H_BACKING_OFFSET, CLUSTER, -4ull)),
        BAD("backing offset in header", V3_BACKING, CORRUPT, "backing file name",
            H64(H_BACKING_OFFSET, 8)),
        BAD("backing offset far", V3_BACKING, CORRUPT, "backing file name",
            H64(H_BACKING_OFFSET, 1ull << 63)),
        BAD("backing offset max", V3_BACKING, CORRUPT, "backing file name",
            H64(H_BACKING_OFFSET, UINT64_MAX)),
        BAD("backing size 0", V3_BACKING, CORRUPT, "backing file name", H32(H_BACKING_SIZE, 0)),
        BAD("backing size 1024", V3_BACKING, CORRUPT, "backing file name",
            H32(H_BACKING_SIZE, 1024)),
        BAD("backing size max", V3_BACKING, CORRUPT, "backing file name",
            H32(H_BACKING_SIZE, 0xffffffff)),
        /* A name longer than a 512-byte cluster: the bounds check must not wrap. */
        BAD("backing size above 512 cluster", V3_512, CORRUPT, "backing file name",
            H64(H_BACKING_OFFSET, 120), H32(H_BACKING_SIZE, 1000)),
        BAD("backing size 513 in 512 cluster", V3_512, CORRUPT, "backing file name",
            H64(H_BACKING_OFFSET, 112), H32(H_BACKING_SIZE, 513)),
        /* One byte past the end of cluster 0 (the name at its end opens: see
         * test_valid_edges). */
        BAD("backing name one past cluster", V3_BACKING, CORRUPT, "backing file name",
            H64R(H_BACKING_OFFSET, CLUSTER, -16ull)),
        BAD("backing name nul", V3_BACKING, CORRUPT, "NUL", AT8(BACKING_NAME, 2, 0)),
        BAD("backing missing", V3_BACKING, RT_ERR_FILE_NOT_FOUND, "backing file",
            AT8(BACKING_NAME, 0, 'X')),
        BAD("backing format long", V3_BACKING, CORRUPT, "backing format", AT32(BACKING_FMT, 4, 40)),
        BAD("extension past cluster", V3_64K, CORRUPT, "header extension",
            AT32(FEATURES, 4, 64 * KIB)),
        BAD("extension length max", V3_64K, CORRUPT, "header extension",
            AT32(FEATURES, 4, 0xffffffff)),
        BAD("extension past 512 cluster", V3_512, CORRUPT, "header extension",
            AT32(FEATURES, 4, 400)),
        /* Past the backing name's start, which ends the extension area. */
        BAD("extension over backing name", V3_BACKING, CORRUPT, "header extension",
            AT32(FEATURES, 4, 4096)),
    };
    RUN(table);
}

static void test_table_entries(void)
{
    static const struct mutation table[] = {
        BAD("l1 entry unaligned", V3_64K, CORRUPT, "L1 entry 0", L1E(0, L2, 512 | COPIED)),
        BAD("l1 entry past eof", V3_64K, CORRUPT, "L1 entry 0",
            L1E(0, EOF_CLUSTER, 8 * 64 * KIB | COPIED)),
        BAD("l1 entry at eof", V2_64K, CORRUPT, "L1 entry 0", L1E(0, EOF_CLUSTER, COPIED)),
        BAD("l1 entry reserved low", V3_64K, CORRUPT, "L1 entry 0", L1E(0, L2, 0x100 | COPIED)),
        BAD("l1 entry compressed bit", V3_64K, CORRUPT, "L1 entry 0",
            L1E(0, L2, COMPRESSED | COPIED)),
        BAD("l1 entry reserved high", V3_512, CORRUPT, "L1 entry 0", L1E(0, L2, 1ull << 56)),
        BAD("l1 empty entry past eof", V3_512, CORRUPT, "L1 entry 40",
            L1E(40, EOF_CLUSTER, 512 * 512)),
        BAD("rt entry unaligned", V3_64K, CORRUPT, "refcount table entry 0", RTE(0, RB, 512)),
        BAD("rt entry past eof", V3_64K, CORRUPT, "refcount table entry 0",
            RTE(0, EOF_CLUSTER, 64 * KIB)),
        BAD("rt entry 1 past eof", V3_512, CORRUPT, "refcount table entry 1",
            RTE(1, EOF_CLUSTER, 512)),
        BAD("rt entry max", V2_64K, CORRUPT, "refcount table entry 0",
            RTE(0, ABS, 0xffffffffffff0000ull)),
        /* Two structures in one cluster. */
        BAD("l2 table on l1", V3_64K, CORRUPT, "overlaps", L1E(0, L1, COPIED)),
        BAD("l2 table on rt", V3_64K, CORRUPT, "overlaps", L1E(0, RT, COPIED)),
        BAD("l2 table on rb", V2_64K, CORRUPT, "overlaps", L1E(0, RB, COPIED)),
        BAD("l2 table on l1 512", V3_512, CORRUPT, "overlaps", L1E(3, L1, COPIED)),
        BAD("rb on l1", V3_64K, CORRUPT, "overlaps", RTE(0, L1, 0)),
        BAD("rb on l2", V3_512, CORRUPT, "overlaps", RTE(1, L2, 0)),
        BAD("rb on rt", V3_64K, CORRUPT, "overlaps", RTE(0, RT, 0)),
    };
    RUN(table);
}

static void test_l2_entries(void)
{
    /* L2 entry 0 maps guest cluster 0, which holds data in every image used here. */
    static const struct mutation table[] = {
        IN_USE("l2 entry unaligned", V3_64K, 100, L2E(0, DATA, 512 | COPIED)),
        IN_USE("l2 entry past eof", V3_64K, 100, L2E(0, EOF_CLUSTER, 16 * 64 * KIB | COPIED)),
        IN_USE("l2 entry at eof", V2_64K, 0, L2E(0, EOF_CLUSTER, COPIED)),
        IN_USE("l2 entry far", V3_64K, 0, L2E(0, ABS, (1ull << 55) | COPIED)),
        IN_USE("l2 entry reserved low", V3_64K, 0, L2E(0, DATA, 0x2 | COPIED)),
        IN_USE("l2 entry reserved high", V3_64K, 0, L2E(0, DATA, (1ull << 56) | COPIED)),
        /* Bit 0 means "zeros" from version 3 on; in version 2 it is reserved. */
        IN_USE("l2 entry zero bit v2", V2_64K, 0, L2E(0, DATA, 1 | COPIED)),
        IN_USE("l2 entry reserved 512", V3_512, 0, L2E(0, DATA, 0x100 | COPIED)),
        IN_USE("l2 entry past eof 512", V3_512, 0, L2E(0, EOF_CLUSTER, 512 | COPIED)),
        /* Data in metadata: a write in place would destroy it. */
        IN_USE("l2 entry on l1", V3_64K, 0, L2E(0, L1, COPIED)),
        IN_USE("l2 entry on rt", V3_64K, 0, L2E(0, RT, COPIED)),
        IN_USE("l2 entry on rb", V2_64K, 0, L2E(0, RB, COPIED)),
        IN_USE("l2 entry on its table", V3_64K, 0, L2E(0, L2, COPIED)),
        IN_USE("l2 entry on l1 512", V3_512, 512, L2E(1, L1, COPIED)),
        /* Compressed: the span at the header, or past the end of the file. */
        IN_USE("l2 compressed in header", V3_64K, 0, L2E(0, ABS, COMPRESSED | 512)),
        IN_USE("l2 compressed past eof", V3_64K, 0, L2E(0, EOF_CLUSTER, COMPRESSED | 4096)),
        /* 64 KiB clusters: sector count bits 54..61; 200 sectors from just before the end. */
        IN_USE("l2 compressed span past eof", V3_64K, 0,
               L2E(0, EOF_CLUSTER, (COMPRESSED | (199ull << 54)) - 1024u)),
        /* 4 KiB clusters: sector count bits 58..61. */
        IN_USE("l2 compressed span past eof 4k", V3_4K_Z, 0,
               L2E(0, EOF_CLUSTER, (COMPRESSED | (15ull << 58)) - 2048u)),
        IN_USE("l2 compressed on l1 4k", V3_4K_Z, 4096, L2E(1, L1, COMPRESSED)),
        IN_USE("l2 entry on rt 4k", V3_4K_Z, 8192, L2E(2, RT, COPIED)),
        /* The last data cluster cut off by the end of the file. */
        IN_USE("truncated data cluster", V3_64K, 4 * MIB - 1, TRUNCATE(EOF_CLUSTER, -64ull * KIB)),
    };
    RUN(table);
}

static void test_valid_edges(void)
{
    static const struct mutation table[] = {
        /* Unknown extensions are skipped. */
        VALID("unknown extension", V3_64K, AT32(FEATURES, 0, 0x12345678)),
        VALID("unknown extension 512", V3_512, AT32(FEATURES, 0, 0x87654321)),
        /* Compatible bits may be ignored (lazy refcounts, clean). */
        VALID("compatible bits", V3_64K, H64(H_COMPATIBLE, 0xffffffffffffffffull)),
        /* zlib, named explicitly. */
        VALID("compression type zlib", V3_4K_Z, H64(H_INCOMPATIBLE, 1ull << 3)),
        /* The snapshot offset means nothing without snapshots. */
        VALID("no snapshots, odd offset", V3_64K, H64(H_SNAPSHOTS_OFFSET, 0x123)),
        /* More L1 entries than the size needs (the rest of the L1 cluster is zeros). */
        VALID("l1 size above need", V3_64K, H32(H_L1_SIZE, 100)),
        /* The backing name in the last bytes of cluster 0. */
        VALID("backing name at cluster end", V3_BACKING, H64R(H_BACKING_OFFSET, CLUSTER, -17ull),
              ATTEXT(CLUSTER, -17ull, "base-v3-64k.qcow"), AT8(CLUSTER, -1ull, '2')),
    };
    RUN(table);
}

static void test_check_finds(void)
{
    /* Refcounts of the first refcount block: 16 bits per cluster. */
    static const struct mutation table[] = {
        CHECKED("refcount 0 on data", V3_64K, false, REF0(DATA)),
        CHECKED("refcount 0 on l2", V3_64K, false, REF0(L2)),
        CHECKED("refcount 0 on l1", V2_64K, false, REF0(L1)),
        CHECKED("refcount 0 on header", V3_512, false, REF0(ABS)),
        CHECKED("refcount 0 on rb", V3_512, false, REF0(RB)),
        CHECKED("refcount 0 on rt", V3_4K_Z, false, REF0(RT)),
        CHECKED("no refcount block", V3_64K, false, RTE(0, ABS, 0)),
        /* Two active L1 entries share one L2 table marked as their own. */
        CHECKED("l2 table twice", V3_512, true, L1E(40, L2, COPIED)),
    };
    RUN(table);
}

static void test_truncation(void)
{
    static const struct mutation table[] = {
        BAD_RAW("truncated 0", V3_64K, CORRUPT, "small", TRUNCATE(ABS, 0)),
        BAD("truncated 50", V3_64K, CORRUPT, "small", TRUNCATE(ABS, 50)),
        BAD("truncated 100", V3_64K, CORRUPT, "header", TRUNCATE(ABS, 100)),
        BAD("truncated 100 v2", V2_64K, CORRUPT, "past the end", TRUNCATE(ABS, 100)),
        BAD("truncated after header", V3_64K, CORRUPT, "past the end", TRUNCATE(ABS, 64 * KIB)),
        BAD("truncated mid l1", V3_512, CORRUPT, "L1 table", TRUNCATE(L1, 256)),
        BAD("truncated mid l1 64k", V3_64K, CORRUPT, "L1 table", TRUNCATE(L1, 4)),
        BAD("truncated mid rt", V3_64K, CORRUPT, "past the end", TRUNCATE(RT, 100)),
        /* The last refcount block, allocated after data: its table entry dangles. */
        BAD("truncated mid rb", V3_512, CORRUPT, "past the end", TRUNCATE(RB_LAST, 256)),
        BAD("truncated mid l2", V3_64K, CORRUPT, "past the end", TRUNCATE(L2, 4096)),
    };
    RUN(table);
}

static void test_snapshot_image(void)
{
    if (!bases[QEMU_SNAP].present)
        return;
    static const struct mutation table[] = {
        BAD("snap count huge", QEMU_SNAP, CORRUPT, "snapshot", H32(H_NB_SNAPSHOTS, 0x10000000)),
        BAD("snap table unaligned", QEMU_SNAP, CORRUPT, "snapshot",
            H64R(H_SNAPSHOTS_OFFSET, SNAPSHOTS, 8)),
        BAD("snap table past eof", QEMU_SNAP, CORRUPT, "snapshot",
            H64R(H_SNAPSHOTS_OFFSET, EOF_CLUSTER, 0)),
        BAD("snap l1 unaligned", QEMU_SNAP, CORRUPT, "snapshot",
            AT64(SNAPSHOTS, 0, SNAPSHOT_L1, 512)),
        BAD("snap l1 past eof", QEMU_SNAP, CORRUPT, "snapshot", AT64(SNAPSHOTS, 0, EOF_CLUSTER, 0)),
        BAD("snap l1 size huge", QEMU_SNAP, CORRUPT, "snapshot", AT32(SNAPSHOTS, 8, 0x20000000)),
        BAD("snap l1 on rt", QEMU_SNAP, CORRUPT, "overlaps", AT64(SNAPSHOTS, 0, RT, 0)),
        BAD("snap l2 on rt", QEMU_SNAP, CORRUPT, "overlaps", AT64(SNAPSHOT_L1, 0, RT, COPIED)),
        BAD("snap l2 past eof", QEMU_SNAP, CORRUPT, "snapshot",
            AT64(SNAPSHOT_L1, 0, EOF_CLUSTER, 0)),
        BAD("active l1 on snap l1", QEMU_SNAP, CORRUPT, "overlaps",
            H64R(H_L1_OFFSET, SNAPSHOT_L1, 0)),
        /* A snapshot entry whose extra data (4 GiB) or name (64 KiB) runs past the end of
         * the file: with data after the table, and with the table last in the file. */
        BAD("snap extra data huge", QEMU_SNAP, CORRUPT, "snapshot",
            AT32(SNAPSHOTS, 36, 0xffffffff)),
        BAD("snap extra data past eof", QEMU_SNAP_LAST, CORRUPT, "snapshot",
            AT32(SNAPSHOTS, 36, 0xffffffff)),
        BAD("snap name past eof", QEMU_SNAP_LAST, CORRUPT, "snapshot", AT16(SNAPSHOTS, 14, 0xffff)),
        /* More extra data than QEMU opens (its limit, 1024 bytes, and one past). */
        BAD("snap extra data 1025", QEMU_SNAP, CORRUPT, "extra data", AT32(SNAPSHOTS, 36, 1025)),
        /* The snapshot's L2 table named with the end of the file inside it. */
        BAD("snap l2 cut by eof", QEMU_SNAP, CORRUPT, "snapshot",
            AT64(SNAPSHOT_L1, 0, EOF_CLUSTER, -4096ull)),
    };
    RUN(table);
    /* Reserved bits in an inactive snapshot's L1 entry: the image reads (its active
     * tables are fine), qemu-img check and ours call it corrupt. */
    static const struct mutation checked[] = {
        CHECKED("snap l1 entry reserved bits", QEMU_SNAP, false,
                AT64(SNAPSHOT_L1, 0, SNAPSHOT_L2, 1ull << 56)),
        CHECKED("snap l1 entry reserved low bit", QEMU_SNAP, false,
                AT64(SNAPSHOT_L1, 0, SNAPSHOT_L2, 0x100)),
    };
    RUN(checked);
}

/* ---------------------------------------------------------------------------------- */
/* Compressed data, autoclear bits. */

/* Where L2 entry @a index of @a b's first table keeps its compressed bytes. */
static uint64_t compressed_host(const struct base *b, const char *path, uint32_t index)
{
    uint64_t entry = read_be(path, b->l2_first + 8u * index, 8);
    CU_ASSERT_FATAL((entry & COMPRESSED) != 0);
    unsigned bits = 0;
    while ((1u << bits) < b->cluster)
        bits++;
    return entry & ((1ull << (62 - (bits - 8))) - 1);
}

static void test_compressed_garbage(void)
{
    const struct base *b = &bases[V3_4K_Z];
    char path[512];
    tst_path(path, sizeof path, "garbage-deflate.qcow2");
    copy_file(b->path, path);
    uint64_t host0 = compressed_host(b, path, 0), host1 = compressed_host(b, path, 1);
    CU_ASSERT_FATAL(host1 >= host0 + 16);
    /* 0xff starts a deflate block of the reserved type 3: a stream error at once. */
    uint8_t junk[16];
    memset(junk, 0xff, sizeof junk);
    patch(path, host0, junk, sizeof junk);

    uint64_t before_size = 0, after_size = 0;
    uint8_t *before = slurp(path, &before_size);
    uint8_t *buf = malloc(b->cluster);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    const uint32_t flags[] = {RT_VD_OPEN_READ_ONLY, 0};
    for (int f = 0; f < 2; f++) {
        rt_vd_t vd = RT_VD_NIL;
        rt_vd_error_t err;
        TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", flags[f], &err), RT_OK);
        TST_RC(rt_vd_read(vd, 0, buf, b->cluster), RT_ERR_VD_CORRUPT);
        TST_RC(rt_vd_read(vd, 100, buf, 512), RT_ERR_VD_CORRUPT);
        /* Its neighbours still read. */
        TST_RC(rt_vd_read(vd, b->cluster, buf, b->cluster), RT_OK);
        CU_ASSERT(memcmp(buf, b->want + b->cluster, b->cluster) == 0);
        TST_RC(rt_vd_read(vd, 0, buf, b->cluster), RT_ERR_VD_CORRUPT);
        if (flags[f] == 0) {
            /* A partial write needs the old bytes: refused, nothing written. */
            memset(buf, 0x33, 512);
            TST_RC(rt_vd_write(vd, 512, buf, 512), RT_ERR_VD_CORRUPT);
        }
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    uint8_t *after = slurp(path, &after_size);
    CU_ASSERT(after_size == before_size && memcmp(before, after, (size_t)before_size) == 0);
    free(before);
    free(after);

    /* A whole-cluster write needs nothing of the broken cluster: it may replace it, or
     * be refused (the layer fills every new cluster from the old one first); either
     * way the rest of the disk is intact and the image consistent. */
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_check_result_t res;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    memset(buf, 0x44, b->cluster);
    int rc = rt_vd_write(vd, 0, buf, b->cluster);
    if (rc != RT_OK)
        printf("\n  note: a whole-cluster write over undecodable compressed data: %s ",
               rt_status_name(rc));
    CU_ASSERT(rc == RT_OK || rc == RT_ERR_VD_CORRUPT);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    uint8_t *all = malloc((size_t)b->size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    if (rc == RT_OK) {
        TST_RC(rt_vd_read(vd, 0, all, b->cluster), RT_OK);
        CU_ASSERT(memcmp(all, buf, b->cluster) == 0);
    } else {
        TST_RC(rt_vd_read(vd, 0, all, b->cluster), RT_ERR_VD_CORRUPT);
    }
    TST_RC(rt_vd_read(vd, b->cluster, all, (size_t)b->size - b->cluster), RT_OK);
    CU_ASSERT(memcmp(all, b->want + b->cluster, (size_t)b->size - b->cluster) == 0);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    free(all);
    free(buf);
}

/* COPIED on a compressed entry: reads are unaffected (a compressed cluster is never
 * written in place), but both checkers call it a corruption. */
static void test_compressed_copied(void)
{
    const struct base *b = &bases[V3_4K_Z];
    char path[512];
    tst_path(path, sizeof path, "compressed-copied.qcow2");
    copy_file(b->path, path);
    uint64_t entry = read_be(path, b->l2_first, 8);
    CU_ASSERT_FATAL((entry & COMPRESSED) != 0);
    patch_be(path, b->l2_first, entry | COPIED, 8);
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_check_result_t res;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    CU_ASSERT(reads_as_expected(vd, b));
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 1);
    CU_ASSERT(mentions(res.first_problem, "compressed") && mentions(res.first_problem, "COPIED"));
    TST_RC(rt_vd_close(vd), RT_OK);
    int q = qemu_img_check_status(path, "qcow2");
    CU_ASSERT(q < 0 || q == 2);
    unlink(path);
}

static void test_compressed_reads(void)
{
    /* The valid compressed image reads in odd pieces too (each one inflates). */
    const struct base *b = &bases[V3_4K_Z];
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_extent_t ext;
    TST_RC_FATAL(rt_vd_open(&vd, b->path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    uint8_t buf[5000];
    for (uint64_t off = 0; off + sizeof buf <= 9u * b->cluster; off += 3333) {
        TST_RC(rt_vd_read(vd, off, buf, sizeof buf), RT_OK);
        CU_ASSERT(memcmp(buf, b->want + off, sizeof buf) == 0);
    }
    TST_RC(rt_vd_block_status(vd, 0, b->size, &ext), RT_OK);
    CU_ASSERT(ext.flags & RT_VD_EXTENT_COMPRESSED);
    CU_ASSERT_EQUAL(ext.host_offset, UINT64_MAX);
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* Open-time work is bounded by the file: 65536 snapshot entries that all name one
 * 1 MiB L1 table are refused (their tables overlap) after the table of entries is read,
 * not after 64 GiB of L1 reads.  Distinct snapshot tables, each read once, open. */
static void test_snapshot_amplification(void)
{
    const struct base *b = &bases[V3_64K];
    enum { ENTRY = 48, COUNT = 65536, L1_BYTES = 1 << 20 };
    char path[512];
    tst_path(path, sizeof path, "many-snapshots.qcow2");
    copy_file(b->path, path);
    uint64_t table = b->eof_cluster;
    uint64_t l1 = table + (uint64_t)COUNT * ENTRY; /* a cluster multiple: 48 * 65536 */
    uint8_t *entries = calloc(COUNT, ENTRY);
    CU_ASSERT_PTR_NOT_NULL_FATAL(entries);
    for (uint32_t i = 0; i < COUNT; i++) {
        uint8_t *e = entries + (size_t)i * ENTRY;
        put_be(e, l1, 8);
        put_be(e + 8, L1_BYTES / 8, 4);
        put_be(e + 12, 1, 2); /* id "1" */
        put_be(e + 14, 1, 2); /* name "s" */
        e[40] = '1';
        e[41] = 's';
    }
    patch(path, table, entries, (size_t)COUNT * ENTRY);
    resize(path, l1 + L1_BYTES);
    patch_be(path, H_NB_SNAPSHOTS, COUNT, 4);
    patch_be(path, H_SNAPSHOTS_OFFSET, table, 8);

    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    uint64_t start = rt_time_milli_ts();
    TST_RC(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_ERR_VD_CORRUPT);
    uint64_t took = rt_time_milli_ts() - start;
    CU_ASSERT(mentions(err.msg, "overlap"));
    if (took > 5000)
        fprintf(stderr, "\n  refusing %u snapshots took %llu ms", COUNT, (unsigned long long)took);
    CU_ASSERT(took <= 5000);

    /* Two snapshots with L1 tables of their own (zeros: nothing under them) open. */
    uint64_t second = l1 + L1_BYTES;
    put_be(entries + ENTRY, second, 8);
    patch(path, table, entries, 2 * ENTRY);
    resize(path, second + L1_BYTES);
    patch_be(path, H_NB_SNAPSHOTS, 2, 4);
    int rc = rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  two snapshots: %s", err.msg);
    TST_RC(rc, RT_OK);
    if (rc == RT_OK) {
        CU_ASSERT(reads_as_expected(vd, b));
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    /* One cluster apart but overlapping: the first table is two clusters long. */
    put_be(entries + ENTRY, l1 + 64 * KIB, 8);
    patch(path, table, entries, 2 * ENTRY);
    TST_RC(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_ERR_VD_CORRUPT);
    CU_ASSERT(mentions(err.msg, "overlap"));
    free(entries);
    unlink(path);
}

/* Where the 16-bit refcount of @a cluster is in @a path (laid out as @a b's file, whose
 * refcount table is read); 0 when no refcount block covers it. */
static uint64_t refcount_entry_at(const struct base *b, const char *path, uint64_t cluster)
{
    uint64_t rb_entries = (uint64_t)b->cluster * 8u / 16u;
    uint64_t block = read_be(path, b->rt_offset + 8u * (cluster / rb_entries), 8);
    return block != 0 ? block + 2u * (cluster % rb_entries) : 0;
}

/* The refcount table moved to the end of the file, as the last structure in it.  With
 * one cluster, wholly inside the file, the image is valid: writes allocate after it and
 * both checkers call it clean.  With two clusters the second starts exactly at the end
 * of the file (or the file ends inside it): the allocator, which starts at the end of
 * the file, would hand that cluster out as data and guest writes would land in the
 * table, so the open is refused. */
static void test_refcount_table_at_eof(void)
{
    const enum image images[] = {V3_64K, V3_512};
    for (size_t i = 0; i < sizeof images / sizeof images[0]; i++) {
        const struct base *b = &bases[images[i]];
        char path[512];
        tst_path(path, sizeof path, "rt-at-eof.qcow2");
        copy_file(b->path, path);
        uint64_t size = 0;
        uint8_t *f = slurp(path, &size);
        uint64_t moved = b->eof_cluster;
        resize(path, moved);
        patch(path, moved, f + b->rt_offset, b->cluster); /* the table's only cluster */
        free(f);
        patch_be(path, H_RT_OFFSET, moved, 8);
        /* Counts: the new place is in use, the old one free. */
        uint64_t new_count = refcount_entry_at(b, b->path, moved / b->cluster);
        CU_ASSERT_FATAL(new_count != 0);
        patch_be(path, new_count, 1, 2);
        patch_be(path, refcount_entry_at(b, b->path, b->rt_offset / b->cluster), 0, 2);

        rt_vd_t vd = RT_VD_NIL;
        rt_vd_error_t err;
        rt_vd_check_result_t res;
        uint8_t data[8192];
        memset(data, 0x3c, sizeof data);
        uint64_t guest = b->size / 2 + 64 * KIB; /* unallocated */
        int rc = rt_vd_open(&vd, path, "qcow2", 0, &err);
        if (rc != RT_OK)
            fprintf(stderr, "\n  %s, table last: %s", b->file, err.msg);
        TST_RC_FATAL(rc, RT_OK);
        TST_RC(rt_vd_write(vd, guest, data, sizeof data), RT_OK);
        TST_RC(rt_vd_close(vd), RT_OK);
        TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
        uint8_t back[8192];
        TST_RC(rt_vd_read(vd, guest, back, sizeof back), RT_OK);
        CU_ASSERT(memcmp(back, data, sizeof data) == 0);
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        if (res.corruptions + res.leaks)
            fprintf(stderr, "\n  %s, table last: %s", b->file, res.first_problem);
        CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
        TST_RC(rt_vd_close(vd), RT_OK);
        int q = qemu_img_check_status(path, "qcow2");
        CU_ASSERT(q <= 0);

        /* Two clusters: the second at the end of the file, then cut by it. */
        copy_file(b->path, path);
        resize(path, moved);
        f = slurp(b->path, &size);
        patch(path, moved, f + b->rt_offset, b->cluster);
        free(f);
        patch_be(path, H_RT_OFFSET, moved, 8);
        patch_be(path, H_RT_CLUSTERS, 2, 4);
        for (int cut = 0; cut < 2; cut++) {
            if (cut)
                resize(path, moved + b->cluster + 100);
            const uint32_t flags[] = {RT_VD_OPEN_READ_ONLY, 0};
            for (int k = 0; k < 2; k++) {
                TST_RC(rt_vd_open(&vd, path, "qcow2", flags[k], &err), RT_ERR_VD_CORRUPT);
                CU_ASSERT(mentions(err.msg, "refcount table") && mentions(err.msg, "end of the file"));
            }
        }
        unlink(path);
    }
}

/* A leak on a data cluster whose one L2 entry lacks COPIED (consistent while the count
 * is 2): the repair brings the count to 1, which makes that entry the owner, so it
 * sets COPIED too; otherwise both checkers would call the repaired image corrupt.
 * Found by the writable fuzz pass. */
static void test_repair_sets_copied(void)
{
    const struct base *b = &bases[V3_64K];
    char path[512];
    tst_path(path, sizeof path, "repair-copied.qcow2");
    copy_file(b->path, path);
    uint64_t entry = read_be(path, b->l2_first, 8);
    patch_be(path, b->l2_first, entry & ~COPIED, 8);
    patch_be(path, refcount_entry_at(b, path, b->data_first / b->cluster), 2, 2);
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_check_result_t res;
    tst_qcow2_repair_one_leak(path, &vd, &res);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    if (res.corruptions + res.leaks)
        fprintf(stderr, "\n  after the repair: %s", res.first_problem);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    CU_ASSERT(reads_as_expected(vd, b));
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT((read_be(path, b->l2_first, 8) & COPIED) != 0);
    int q = qemu_img_check_status(path, "qcow2");
    CU_ASSERT(q <= 0);
    unlink(path);
}

/* A crash can leave refcounts on clusters past the end of the file (the refcount block
 * was committed, the data that would have extended the file was not).  The next writer
 * must not hand those clusters out again: counted twice, they would read "refcount 2,
 * reference 1" to both checkers, and the next free would drop a live cluster. */
static void test_allocator_skips_counted_clusters(void)
{
    const enum image images[] = {V3_512, V3_64K};
    for (size_t i = 0; i < sizeof images / sizeof images[0]; i++) {
        const struct base *b = &bases[images[i]];
        char path[512];
        tst_path(path, sizeof path, "counted-past-eof.qcow2");
        copy_file(b->path, path);
        uint64_t first = b->eof_cluster / b->cluster;
        for (uint64_t k = 0; k < 3; k++) {
            uint64_t at = refcount_entry_at(b, path, first + k);
            CU_ASSERT_FATAL(at != 0);
            patch_be(path, at, 1, 2);
        }

        rt_vd_t vd = RT_VD_NIL;
        rt_vd_error_t err;
        uint8_t data[4096];
        memset(data, 0x6b, sizeof data);
        uint64_t guest = b->size / 2 + 64 * KIB; /* unallocated in both images */
        TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
        TST_RC(rt_vd_write(vd, guest, data, sizeof data), RT_OK);
        TST_RC(rt_vd_flush(vd), RT_OK);
        rt_vd_extent_t ext;
        TST_RC(rt_vd_block_status(vd, guest, sizeof data, &ext), RT_OK);
        CU_ASSERT(ext.flags & RT_VD_EXTENT_DATA);
        if (ext.host_offset < b->eof_cluster + 3 * b->cluster)
            fprintf(stderr, "\n  %s: host 0x%llx, eof 0x%llx", b->file,
                    (unsigned long long)ext.host_offset, (unsigned long long)b->eof_cluster);
        CU_ASSERT(ext.host_offset >= b->eof_cluster + 3 * b->cluster);
        TST_RC(rt_vd_close(vd), RT_OK);

        TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
        uint8_t back[4096];
        TST_RC(rt_vd_read(vd, guest, back, sizeof back), RT_OK);
        CU_ASSERT(memcmp(back, data, sizeof data) == 0);
        rt_vd_check_result_t res;
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        if (res.corruptions != 0)
            fprintf(stderr, "\n  %s: %s", b->file, res.first_problem);
        CU_ASSERT_EQUAL(res.corruptions, 0);
        CU_ASSERT(res.leaks >= 3);
        TST_RC(rt_vd_close(vd), RT_OK);
        int q = qemu_img_check_status(path, "qcow2");
        CU_ASSERT(q < 0 || q == 3);
        unlink(path);
    }
}

/* A repair reclaims leaks only when it can see everything: an extension this library
 * does not know (it may own the leaked-looking clusters), or a corruption, makes it
 * change nothing and say why.  The same leak is reclaimed once the cause is gone. */
static void test_repair_refused(void)
{
    const struct base *b = &bases[V3_64K];
    char path[512];
    tst_path(path, sizeof path, "repair-refused.qcow2");
    /* The extension types: unknown; full disk encryption's and the external data
     * file's, known but meaningless without their features (so not understood). */
    const uint32_t extensions[] = {0x12345678, 0x0537be77, 0x44415441};
    const int variants = 5;
    for (int variant = 0; variant < variants; variant++) {
        copy_file(b->path, path);
        /* A leak: one more cluster at the end of the file, counted, referenced by none. */
        uint64_t leaked = b->eof_cluster / b->cluster;
        resize(path, b->eof_cluster + b->cluster);
        patch_be(path, b->rb_first + 2 * leaked, 1, 2);
        const char *why = NULL;
        if (variant < 3) {
            patch_be(path, b->feature_table, extensions[variant], 4);
            why = "extension";
        } else if (variant == 3) {
            patch_be(path, b->rb_first + 2 * (b->data_first / b->cluster), 0, 2);
            why = "corruption";
        }
        uint64_t before_size = 0, after_size = 0;
        uint8_t *before = slurp(path, &before_size);
        rt_vd_t vd = RT_VD_NIL;
        rt_vd_error_t err;
        rt_vd_check_result_t res;
        TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
        TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_OK);
        /* leaks counts what is left after the repair. */
        CU_ASSERT_EQUAL(res.leaks, why != NULL ? 1u : 0u);
        if (why != NULL) {
            CU_ASSERT_EQUAL(res.leaks_fixed, 0);
            CU_ASSERT(mentions(res.repair_refused, why));
        } else {
            CU_ASSERT_EQUAL(res.leaks_fixed, 1);
            CU_ASSERT_EQUAL(res.repair_refused[0], '\0');
        }
        CU_ASSERT(variant == 3 ? res.corruptions > 0 : res.corruptions == 0);
        TST_RC(rt_vd_close(vd), RT_OK);
        uint8_t *after = slurp(path, &after_size);
        bool same = after_size == before_size && memcmp(before, after, (size_t)before_size) == 0;
        CU_ASSERT(why != NULL ? same : !same);
        free(before);
        free(after);
    }
    unlink(path);
}

static void test_autoclear(void)
{
    const struct base *b = &bases[V3_64K];
    char path[512];
    tst_path(path, sizeof path, "autoclear.qcow2");
    copy_file(b->path, path);
    patch_be(path, H_AUTOCLEAR, 0x3, 8);
    uint64_t before_size = 0, after_size = 0;
    uint8_t *before = slurp(path, &before_size);

    /* Read-only: opens and leaves the bits. */
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    CU_ASSERT(reads_as_expected(vd, b));
    TST_RC(rt_vd_close(vd), RT_OK);
    uint8_t *after = slurp(path, &after_size);
    CU_ASSERT(after_size == before_size && memcmp(before, after, (size_t)before_size) == 0);
    free(after);

    /* Writable but not written (a read, a check): the bits stay. */
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    CU_ASSERT(reads_as_expected(vd, b));
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(read_be(path, H_AUTOCLEAR, 8), 3);

    /* Written: the bits are cleared, durably, before the first guest byte changes;
     * nothing else in the header changes.  The write puts back what was there. */
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    TST_RC(rt_vd_write(vd, 0, b->want, 512), RT_OK);
    CU_ASSERT_EQUAL(read_be(path, H_AUTOCLEAR, 8), 0);
    CU_ASSERT(reads_as_expected(vd, b));
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(read_be(path, H_AUTOCLEAR, 8), 0);
    after = slurp(path, &after_size);
    patch_be(path, H_AUTOCLEAR, 0x3, 8);
    uint8_t *again = slurp(path, &after_size);
    CU_ASSERT(after_size == before_size && memcmp(before, again, (size_t)before_size) == 0);
    free(again);
    patch(path, 0, after, 512); /* back to the cleared header */
    free(after);
    free(before);
    if (qemu_img_check_status(path, "qcow2") >= 0)
        CU_ASSERT_EQUAL(qemu_img_clean_as(path, "qcow2"), 1);
    /* A v2 header has no autoclear field: those bytes are extensions (here: none). */
}

int main(void)
{
    create_images();

    CU_pSuite valid = tst_suite("valid QCOW2 images");
    CU_pSuite refused = tst_suite("malformed QCOW2 images refused");
    CU_pSuite in_use = tst_suite("malformed QCOW2 entries found when used");

    TST_ADD(valid, test_valid_images);
    TST_ADD(valid, test_compressed_reads);
    TST_ADD(valid, test_autoclear);
    TST_ADD(valid, test_valid_edges);

    TST_ADD(refused, test_header_fields);
    TST_ADD(refused, test_sizes_and_tables);
    TST_ADD(refused, test_features);
    TST_ADD(refused, test_extensions_and_backing);
    TST_ADD(refused, test_table_entries);
    TST_ADD(refused, test_truncation);
    TST_ADD(refused, test_snapshot_image);
    TST_ADD(refused, test_snapshot_amplification);

    TST_ADD(in_use, test_l2_entries);
    TST_ADD(in_use, test_compressed_garbage);
    TST_ADD(in_use, test_compressed_copied);
    TST_ADD(in_use, test_check_finds);
    TST_ADD(in_use, test_repair_refused);
    TST_ADD(in_use, test_allocator_skips_counted_clusters);
    TST_ADD(in_use, test_repair_sets_copied);
    TST_ADD(in_use, test_refcount_table_at_eof);

    int rc = tst_run();
    for (int i = 0; i < IMAGES; i++)
        free(bases[i].want);
    return rc;
}
