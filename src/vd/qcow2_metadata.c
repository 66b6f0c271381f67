/*
 * The QCOW2 metadata index: which clusters hold a structure, so that no data entry may
 * point into one (a write in place there would destroy it) and the allocator never
 * hands one out.  QEMU's qcow2_check_metadata_overlap() is the model.
 *
 * At open every structure the image names is noted: the header cluster, the active L1
 * table and its L2 tables, the refcount table and blocks, the snapshot table, each
 * snapshot's L1 table and the L2 tables it names, and, while the bitmaps autoclear bit
 * says they are valid, the bitmap directory, the bitmap tables and their data clusters.
 * Each must lie wholly inside the file, and no two may share a cluster (an L2 table may
 * be shared by the active table and snapshots; nothing else may).
 *
 * Work at open is bounded by the size of the file.  The snapshot table and the bitmap
 * directory are read once; the tables they name are checked to be disjoint before any
 * of them is read, so 65536 snapshot entries naming one 32 MiB L1 table are refused
 * after reading 65536 small entries, not after reading 2 TiB.  Each byte of the file is
 * read at most once to build the index, and the index holds at most one entry per
 * table entry read.
 *
 * After open, every cluster handed out for metadata is appended to a second array.  The
 * allocator only moves upwards, so that array stays sorted without any sorting.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "vd/qcow2.h"

/* Metadata roles, kept in the low bits of each index entry. */
enum { ROLE_FIXED, ROLE_L2 };

/* Snapshot table entries: the fixed part, and the most extra data QEMU opens. */
#define SNAPSHOT_FIXED     40u
#define SNAPSHOT_MAX_EXTRA 1024u
/* Bitmap directory entries: the fixed part, and what QEMU allows in it. */
#define BITMAP_FIXED 24u
#define BITMAP_TYPE_DIRTY 1u
#define BITMAP_RESERVED_FLAGS 0xfffffffcu
#define BITMAP_FLAG_IN_USE 1u /* a program had it loaded and did not store it back */
#define BITMAP_MIN_GRANULARITY 9u
#define BITMAP_MAX_GRANULARITY 31u
#define BITMAP_MAX_DATA (512ull << 20)

/* Bytes read per call while walking the snapshot table. */
#define WINDOW (64u << 10)

static int note_range(struct qcow2 *s, size_t *cap, uint64_t off, uint64_t bytes, int role)
{
    if (bytes == 0)
        return RT_OK;
    for (uint64_t c = off >> s->cluster_bits; c <= (off + bytes - 1) >> s->cluster_bits; c++) {
        uint64_t *grown = rt__vd_grow(s->metadata, cap, s->metadata_len, sizeof(*grown), 64);
        if (grown == NULL)
            return RT_ERR_NO_MEMORY;
        s->metadata = grown;
        s->metadata[s->metadata_len++] = c << 3 | (uint64_t)role;
    }
    return RT_OK;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---------------------------------------------------------------------------------- */
/* Tables named by a list (snapshot L1 tables, bitmap tables): disjoint before read. */

struct named_table {
    uint64_t off, bytes;
    uint32_t owner; /* the snapshot or bitmap that names it */
};

static int compare_tables(const void *a, const void *b)
{
    const struct named_table *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Sorts @a tables by offset and refuses two that share a cluster. */
static int check_disjoint(const struct qcow2 *s, struct named_table *tables, size_t n,
                          const char *what, rt_vd_error_t *err)
{
    qsort(tables, n, sizeof(*tables), compare_tables);
    for (size_t i = 1; i < n; i++) {
        const struct named_table *a = &tables[i - 1], *b = &tables[i];
        uint64_t a_last = (a->off + a->bytes - 1) >> s->cluster_bits;
        if (a->bytes > 0 && b->bytes > 0 && b->off >> s->cluster_bits <= a_last)
            return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                               "QCOW2 metadata overlaps: the %s tables of %u and %u share "
                               "cluster %llu",
                               what, a->owner, b->owner,
                               (unsigned long long)(b->off >> s->cluster_bits));
    }
    return RT_OK;
}

static int compare_l1_refs(const void *a, const void *b)
{
    const struct qcow2_l1_ref *x = a, *y = b;
    if (x->table != y->table)
        return x->table < y->table ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

struct qcow2_l1_ref *rt__qcow2_l1_by_table(const uint64_t *l1, uint32_t entries,
                                           uint32_t *count)
{
    struct qcow2_l1_ref *refs = malloc(entries ? (size_t)entries * sizeof(*refs) : 1);
    if (refs == NULL)
        return NULL;
    uint32_t n = 0;
    for (uint32_t i = 0; i < entries; i++)
        if (l1[i] & QCOW2_OFFSET_MASK)
            refs[n++] = (struct qcow2_l1_ref){l1[i] & QCOW2_OFFSET_MASK, i};
    qsort(refs, n, sizeof(*refs), compare_l1_refs);
    *count = n;
    return refs;
}

/* How many of the first @a n entries hold data. */
static uint64_t allocated_in(const uint64_t *entries, uint64_t n)
{
    uint64_t allocated = 0;
    for (uint64_t j = 0; j < n; j++) {
        uint64_t e = entries[j];
        allocated += (e & QCOW2_COMPRESSED) || ((e & QCOW2_OFFSET_MASK) && !(e & QCOW2_ZERO));
    }
    return allocated;
}

uint64_t rt__qcow2_allocated_through(const struct qcow2 *s, const uint64_t *entries,
                                     const struct qcow2_l1_ref *refs, uint32_t n,
                                     uint64_t blocks)
{
    uint64_t whole = allocated_in(entries, s->l2_entries), total = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t first = (uint64_t)refs[k].index << s->l2_bits;
        if (first >= blocks)
            continue; /* past the virtual size: not the disk's */
        uint64_t in_disk = blocks - first;
        total += in_disk >= s->l2_entries ? whole : allocated_in(entries, in_disk);
    }
    return total;
}

/* Reads @a bytes at @a off (inside the file, checked) into a new buffer. */
static int read_table(rt_vd_t vd, uint64_t off, uint64_t bytes, uint8_t **out)
{
    *out = malloc(bytes ? (size_t)bytes : 1);
    if (*out == NULL)
        return RT_ERR_NO_MEMORY;
    int rc = bytes ? rt__vd_meta_read(vd, off, *out, (size_t)bytes) : RT_OK;
    if (rc != RT_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

/* ---------------------------------------------------------------------------------- */
/* Snapshots. */

/* A window over a table read sequentially in small pieces. */
struct window {
    rt_vd_t vd;
    uint64_t file_size;
    uint64_t start; /* file offset of buf[0] */
    size_t len;
    uint8_t *buf;
};

/* Copies @a n bytes at file offset @a off (inside the file) out of the window. */
static int window_get(struct window *w, uint64_t off, void *dst, size_t n)
{
    if (off < w->start || off + n > w->start + w->len) {
        uint64_t len = w->file_size - off < WINDOW ? w->file_size - off : WINDOW;
        int rc = rt__vd_meta_read(w->vd, off, w->buf, (size_t)len);
        if (rc != RT_OK)
            return rc;
        w->start = off;
        w->len = (size_t)len;
    }
    memcpy(dst, w->buf + (off - w->start), n);
    return RT_OK;
}

int rt__qcow2_walk_snapshots(rt_vd_t vd, struct qcow2 *s, uint64_t file_size,
                             rt__qcow2_snapshot_fn *fn, void *ctx, uint64_t *table_end,
                             rt_vd_error_t *err)
{
    *table_end = s->snapshots_offset;
    if (s->nb_snapshots == 0)
        return RT_OK;
    struct named_table *l1s = calloc(s->nb_snapshots, sizeof(*l1s));
    struct window w = {vd, file_size, 0, 0, malloc(WINDOW)};
    int rc = RT_ERR_NO_MEMORY;
    if (l1s == NULL || w.buf == NULL)
        goto out;

    /* The table itself: every entry inside the file; the padding after the last one
     * may be cut. */
    uint64_t at = s->snapshots_offset;
    for (uint32_t n = 0; n < s->nb_snapshots; n++) {
        uint8_t fixed[SNAPSHOT_FIXED];
        if (!vd_inside(at, sizeof(fixed), file_size)) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 snapshot table entry %u runs past the end of the file", n);
            goto out;
        }
        if ((rc = window_get(&w, at, fixed, sizeof(fixed))) != RT_OK)
            goto out;
        if (vd_be32(fixed + 36) > SNAPSHOT_MAX_EXTRA) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 snapshot table entry %u has %u bytes of extra data (QEMU "
                             "allows %u)",
                             n, vd_be32(fixed + 36), SNAPSHOT_MAX_EXTRA);
            goto out;
        }
        uint64_t entry_len =
            sizeof(fixed) + (uint64_t)vd_be32(fixed + 36) + vd_be16(fixed + 12) + vd_be16(fixed + 14);
        if (!vd_inside(at, entry_len, file_size)) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 snapshot table entry %u (its extra data, id or name) runs "
                             "past the end of the file",
                             n);
            goto out;
        }
        at += (entry_len + 7u) & ~7ull; /* no wrap: at + entry_len <= file_size */
        uint64_t l1_offset = vd_be64(fixed);
        uint32_t l1_size = vd_be32(fixed + 8);
        uint64_t l1_bytes = 0;
        if ((uint64_t)l1_size * 8u > QCOW2_MAX_L1_BYTES || l1_offset % s->cluster_size != 0 ||
            (l1_size > 0 && l1_offset == 0) ||
            !vd_table_inside(l1_offset, l1_size, 8, file_size, &l1_bytes)) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 snapshot %u has an invalid L1 table (%u entries at 0x%llx)",
                             n, l1_size, (unsigned long long)l1_offset);
            goto out;
        }
        l1s[n] = (struct named_table){l1_offset, l1_bytes, n};
    }
    *table_end = at;

    /* Disjoint before any is read: each table is read once. */
    if ((rc = check_disjoint(s, l1s, s->nb_snapshots, "snapshot L1", err)) != RT_OK)
        goto out;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint8_t *raw;
        uint32_t entries = (uint32_t)(l1s[i].bytes / 8u);
        if ((rc = read_table(vd, l1s[i].off, l1s[i].bytes, &raw)) != RT_OK)
            goto out;
        uint64_t *l1 = (uint64_t *)(void *)raw; /* converted in place, 8-byte aligned */
        for (uint32_t k = 0; k < entries; k++)
            l1[k] = vd_be64(raw + 8u * k);
        rc = fn(ctx, l1s[i].owner, l1s[i].off, l1, entries);
        free(raw);
        if (rc != RT_OK)
            goto out;
    }
    rc = RT_OK;
out:
    free(w.buf);
    free(l1s);
    return rc;
}

struct note_ctx {
    rt_vd_t vd;
    struct qcow2 *s;
    size_t *cap;
    uint64_t file_size;
    rt_vd_error_t *err;
};

/* A snapshot's L1 table and the L2 tables it names (each inside the file). */
static int note_snapshot(void *ctx, uint32_t n, uint64_t l1_offset, const uint64_t *l1,
                         uint32_t entries)
{
    struct note_ctx *c = ctx;
    struct qcow2 *s = c->s;
    int rc = note_range(s, c->cap, l1_offset, (uint64_t)entries * 8u, ROLE_FIXED);
    for (uint32_t i = 0; rc == RT_OK && i < entries; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (l2 % s->cluster_size != 0 || (l2 != 0 && !vd_inside(l2, s->cluster_size, c->file_size)))
            rc = rt__vd_fail(c->err, RT_ERR_VD_CORRUPT,
                             "QCOW2 snapshot %u: L1 entry %u points at a bad L2 table "
                             "(0x%llx, past the end of the file or unaligned)",
                             n, i, (unsigned long long)l2);
        else if (l2 != 0)
            rc = note_range(s, c->cap, l2, s->cluster_size, ROLE_L2);
    }
    return rc;
}

/* ---------------------------------------------------------------------------------- */
/* Bitmaps. */

/* QEMU's constraints on a bitmap (qcow2's bitmaps specification): a dirty-tracking
 * bitmap, granularity 2^9 to 2^31 bytes, no reserved flag, and a table whose data (one
 * cluster per entry) is at most 512 MiB and covers the whole disk.  The bound also
 * bounds what open reads: 512 MiB of data needs at most 8 MiB of table. */
static int bitmap_fits(const struct qcow2 *s, uint32_t n, const uint8_t *e, uint32_t table_size,
                       rt_vd_error_t *err)
{
    uint32_t flags = vd_be32(e + 12);
    uint8_t type = e[16], granularity_bits = e[17];
    if (type != BITMAP_TYPE_DIRTY || (flags & BITMAP_RESERVED_FLAGS) != 0 ||
        granularity_bits < BITMAP_MIN_GRANULARITY || granularity_bits > BITMAP_MAX_GRANULARITY)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 bitmap %u has type %u, flags 0x%x and granularity 2^%u: "
                           "only dirty-tracking bitmaps (type 1) with granularity 2^%u to "
                           "2^%u and no reserved flags exist",
                           n, type, flags, granularity_bits, BITMAP_MIN_GRANULARITY,
                           BITMAP_MAX_GRANULARITY);
    /* An in-use bitmap is inconsistent by definition: a disk resized while it was
     * loaded leaves it shorter than the disk, and the image is still valid.  Only a
     * bitmap that claims to be consistent must cover every byte. */
    uint64_t data_bytes = (uint64_t)table_size << s->cluster_bits;
    bool must_cover = !(flags & BITMAP_FLAG_IN_USE);
    if (data_bytes > BITMAP_MAX_DATA ||
        (must_cover && s->size > (data_bytes * 8u) << granularity_bits))
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 bitmap %u: its table of %u clusters %s", n, table_size,
                           data_bytes > BITMAP_MAX_DATA
                               ? "holds more than 512 MiB of bitmap"
                               : "does not cover the virtual disk at its granularity");
    return RT_OK;
}

int rt__qcow2_walk_bitmaps(rt_vd_t vd, struct qcow2 *s, uint64_t file_size,
                           rt__qcow2_range_fn *fn, void *ctx, rt_vd_error_t *err)
{
    if (s->nb_bitmaps == 0 || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return RT_OK; /* none, or stale: a program without bitmap support wrote since */
    uint64_t dir_off = s->bitmap_dir_offset, dir_size = s->bitmap_dir_size;
    if (s->nb_bitmaps > QCOW2_MAX_BITMAPS || dir_size > QCOW2_MAX_BITMAP_DIR ||
        dir_size < (uint64_t)s->nb_bitmaps * BITMAP_FIXED || dir_off % s->cluster_size != 0 ||
        dir_off == 0 || !vd_inside(dir_off, dir_size, file_size))
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 bitmap directory (%u bitmaps, %llu bytes at 0x%llx) is "
                           "invalid or runs past the end of the file",
                           s->nb_bitmaps, (unsigned long long)dir_size,
                           (unsigned long long)dir_off);
    uint8_t *dir = NULL, *raw = NULL;
    struct named_table *tables = calloc(s->nb_bitmaps, sizeof(*tables));
    int rc = tables != NULL ? read_table(vd, dir_off, dir_size, &dir) : RT_ERR_NO_MEMORY;
    if (rc != RT_OK)
        goto out;
    uint64_t at = 0;
    for (uint32_t n = 0; n < s->nb_bitmaps; n++) {
        if (!vd_inside(at, BITMAP_FIXED, dir_size)) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 bitmap directory entry %u runs past the directory", n);
            goto out;
        }
        const uint8_t *e = dir + at;
        uint64_t entry_len = BITMAP_FIXED + (uint64_t)vd_be32(e + 20) + vd_be16(e + 18);
        if (!vd_inside(at, entry_len, dir_size)) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 bitmap directory entry %u (its name or extra data) runs "
                             "past the directory",
                             n);
            goto out;
        }
        uint64_t table_off = vd_be64(e);
        uint32_t table_size = vd_be32(e + 8);
        uint64_t table_bytes = 0;
        if (table_size == 0 || table_size > QCOW2_MAX_BITMAP_TABLE ||
            table_off % s->cluster_size != 0 || table_off == 0 ||
            !vd_table_inside(table_off, table_size, 8, file_size, &table_bytes)) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 bitmap %u has an invalid bitmap table (%u entries at 0x%llx)",
                             n, table_size, (unsigned long long)table_off);
            goto out;
        }
        if ((rc = bitmap_fits(s, n, e, table_size, err)) != RT_OK)
            goto out;
        tables[n] = (struct named_table){table_off, table_bytes, n};
        at += (entry_len + 7u) & ~7ull;
    }
    if ((rc = fn(ctx, dir_off, dir_size, "bitmap directory")) != RT_OK)
        goto out;
    if ((rc = check_disjoint(s, tables, s->nb_bitmaps, "bitmap", err)) != RT_OK)
        goto out;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        if ((rc = fn(ctx, tables[i].off, tables[i].bytes, "bitmap table")) != RT_OK)
            goto out;
        if ((rc = read_table(vd, tables[i].off, tables[i].bytes, &raw)) != RT_OK)
            goto out;
        for (uint64_t k = 0; rc == RT_OK && k < tables[i].bytes / 8u; k++) {
            uint64_t entry = vd_be64(raw + 8u * k);
            uint64_t data = entry & QCOW2_OFFSET_MASK;
            if ((entry & QCOW2_BITMAP_RESERVED) != 0 || data % s->cluster_size != 0 ||
                (data != 0 && (entry & 1u)) ||
                (data != 0 && !vd_inside(data, s->cluster_size, file_size)))
                rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                                 "QCOW2 bitmap %u: table entry %llu (0x%016llx) is unaligned, "
                                 "has reserved bits set or points past the end of the file",
                                 tables[i].owner, (unsigned long long)k,
                                 (unsigned long long)entry);
            else if (data != 0)
                rc = fn(ctx, data, s->cluster_size, "bitmap data cluster");
        }
        free(raw);
        raw = NULL;
        if (rc != RT_OK)
            goto out;
    }
out:
    free(raw);
    free(dir);
    free(tables);
    return rc;
}

static int note_bitmap_range(void *ctx, uint64_t off, uint64_t bytes, const char *what)
{
    struct note_ctx *c = ctx;
    return note_range(c->s, c->cap, off, bytes, ROLE_FIXED);
}

/* ---------------------------------------------------------------------------------- */
/* The index. */

int rt__qcow2_index_metadata(rt_vd_t vd, struct qcow2 *s, uint64_t file_size, rt_vd_error_t *err)
{
    size_t cap = 0;
    struct note_ctx ctx = {vd, s, &cap, file_size, err};
    int rc = note_range(s, &cap, 0, s->cluster_size, ROLE_FIXED);
    if (rc == RT_OK)
        rc = note_range(s, &cap, s->l1_offset, (uint64_t)s->l1_size * 8u, ROLE_FIXED);
    if (rc == RT_OK)
        rc = note_range(s, &cap, s->rt_offset, (uint64_t)s->rt_clusters * s->cluster_size,
                        ROLE_FIXED);
    for (uint64_t i = 0; rc == RT_OK && i < s->rt_entries; i++)
        if (s->rt[i] != 0)
            rc = note_range(s, &cap, s->rt[i], s->cluster_size, ROLE_FIXED);
    for (uint32_t i = 0; rc == RT_OK && i < s->l1_size; i++)
        if (s->l1[i] & QCOW2_OFFSET_MASK)
            rc = note_range(s, &cap, s->l1[i] & QCOW2_OFFSET_MASK, s->cluster_size, ROLE_L2);
    uint64_t table_end = 0;
    if (rc == RT_OK)
        rc = rt__qcow2_walk_snapshots(vd, s, file_size, note_snapshot, &ctx, &table_end, err);
    if (rc == RT_OK && s->nb_snapshots > 0)
        rc = note_range(s, &cap, s->snapshots_offset, table_end - s->snapshots_offset,
                        ROLE_FIXED);
    if (rc == RT_OK)
        rc = rt__qcow2_walk_bitmaps(vd, s, file_size, note_bitmap_range, &ctx, err);
    if (rc != RT_OK)
        return rc;

    qsort(s->metadata, s->metadata_len, sizeof(*s->metadata), compare_u64);
    size_t kept = 0;
    for (size_t i = 0; i < s->metadata_len; i++) {
        if (kept > 0 && s->metadata[kept - 1] >> 3 == s->metadata[i] >> 3) {
            bool shared_l2 =
                (s->metadata[kept - 1] & 7) == ROLE_L2 && (s->metadata[i] & 7) == ROLE_L2;
            if (!shared_l2)
                return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                                   "QCOW2 metadata overlaps: cluster %llu holds two structures",
                                   (unsigned long long)(s->metadata[i] >> 3));
            continue;
        }
        s->metadata[kept++] = s->metadata[i];
    }
    s->metadata_len = kept;
    return RT_OK;
}

static bool in_sorted(const uint64_t *index, size_t len, unsigned shift, uint64_t cluster)
{
    size_t lo = 0, hi = len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (index[mid] >> shift < cluster)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < len && index[lo] >> shift == cluster;
}

bool rt__qcow2_is_metadata(const struct qcow2 *s, uint64_t cluster)
{
    return in_sorted(s->metadata, s->metadata_len, 3, cluster) ||
           in_sorted(s->new_metadata, s->new_metadata_len, 0, cluster);
}

int rt__qcow2_note_metadata(struct qcow2 *s, uint64_t host, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        uint64_t *grown = rt__vd_grow(s->new_metadata, &s->new_metadata_cap,
                                      s->new_metadata_len, sizeof(*grown), 64);
        if (grown == NULL)
            return RT_ERR_NO_MEMORY;
        s->new_metadata = grown;
        s->new_metadata[s->new_metadata_len++] = (host >> s->cluster_bits) + i;
    }
    return RT_OK;
}
