/*
 * QCOW2 (versions 2 and 3): header and extensions, open, map, reads.
 *
 *   cluster 0   header, header extensions, backing file name
 *   L1 table    one entry per L2 table: host offset | COPIED
 *   L2 tables   one entry per cluster: host offset | COPIED, or ZERO, or COMPRESSED
 *               (byte offset and sector count of deflated data), or 0: unallocated
 *   refcounts   a table of refcount blocks; each cluster's reference count
 *
 * Every header field is checked before use, every table offset when it is first
 * followed (aligned, inside the file), and an unknown incompatible feature, encryption,
 * an external data file or extended L2 entries refuse the open with the feature's
 * name, taken from the image's feature-name table when it has one.
 */
#include "config.h"

#include <rt/mem.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "vd/qcow2.h"

static int qcow2_probe(const struct vd_probe *p)
{
    if (p->head_len < 8 || vd_be32(p->head + QH_MAGIC) != QCOW2_MAGIC)
        return 0;
    uint32_t version = vd_be32(p->head + QH_VERSION);
    return version == 2 || version == 3 ? 100 : 50;
}

void rt__qcow2_compressed_span(const struct qcow2 *s, uint64_t entry, uint64_t *host,
                               uint64_t *bytes)
{
    uint32_t shift = 62 - (s->cluster_bits - 8);
    uint64_t offset_mask = (1ull << shift) - 1;
    uint64_t sectors = ((entry & ~(QCOW2_COPIED | QCOW2_COMPRESSED)) >> shift) + 1;
    *host = entry & offset_mask;
    *bytes = sectors * 512u - (*host & 511u);
}

/* The default of the l2-cache-size open option. */
#define L2_CACHE_BYTES (32u << 20)

/* ---------------------------------------------------------------------------------- */
/* Header. */

static const char *feature_name(const struct qcow2 *s, uint8_t type, uint8_t bit)
{
    for (uint32_t i = 0; i < s->nb_features; i++)
        if (s->features[i].type == type && s->features[i].bit == bit)
            return s->features[i].name;
    return NULL;
}

static int parse_extensions(struct qcow2 *s, uint32_t start, uint32_t end, rt_vd_error_t *err)
{
    const uint8_t *h = s->header;
    uint32_t at = start;
    while (at + 8 <= end) {
        uint32_t type = vd_be32(h + at);
        uint32_t len = vd_be32(h + at + 4);
        at += 8;
        if (type == QCOW2_EXT_END)
            return RT_OK;
        if (len > end - at)
            return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                               "QCOW2 header extension 0x%08x (%u bytes) runs past cluster 0",
                               type, len);
        const uint8_t *data = h + at;
        switch (type) {
        case QCOW2_EXT_BACKING_FMT:
            if (len >= sizeof(s->backing_format))
                return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                                   "QCOW2 backing format name of %u bytes is too long", len);
            memcpy(s->backing_format, data, len);
            s->backing_format[len] = '\0';
            break;
        case QCOW2_EXT_FEATURE_NAME:
            free(s->features);
            s->nb_features = len / 48;
            s->features = calloc(s->nb_features ? s->nb_features : 1, sizeof(*s->features));
            if (s->features == NULL)
                return RT_ERR_NO_MEMORY;
            for (uint32_t i = 0; i < s->nb_features; i++) {
                s->features[i].type = data[48 * i];
                s->features[i].bit = data[48 * i + 1];
                memcpy(s->features[i].name, data + 48 * i + 2, 46);
                s->features[i].name[46] = '\0';
            }
            break;
        case QCOW2_EXT_BITMAPS:
            if (len != 24 || vd_be32(data + 4) != 0)
                return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                                   "QCOW2 bitmaps extension of %u bytes is invalid (24 bytes, "
                                   "reserved field zero)",
                                   len);
            s->nb_bitmaps = vd_be32(data);
            s->bitmap_dir_size = vd_be64(data + 8);
            s->bitmap_dir_offset = vd_be64(data + 16);
            break;
        case QCOW2_EXT_CRYPTO:
        case QCOW2_EXT_DATA_FILE:
            /* The features they belong to are refused by name; here without them, they
             * may still name clusters this driver does not count: no repair. */
            s->unknown_extensions++;
            break;
        default:
            /* Skipped, as the specification says; but a structure we cannot see may own
             * clusters, so a repair would not be safe. */
            s->unknown_extensions++;
            break;
        }
        at += (len + 7u) & ~7u;
    }
    return RT_OK;
}

static int check_features(struct qcow2 *s, rt_vd_error_t *err)
{
    static const char *const known[] = {"dirty bit", "corrupt bit", "external data file",
                                         "compression type", "extended L2 entries"};
    uint64_t bad = s->incompatible & ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT |
                                       QCOW2_INCOMPAT_COMPRESSION);
    for (uint8_t bit = 0; bit < 64; bit++) {
        if (!(bad & (1ull << bit)))
            continue;
        const char *name = feature_name(s, 0, bit);
        if (name == NULL || name[0] == '\0')
            name = bit < 5 ? known[bit] : "unknown";
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "QCOW2 incompatible feature bit %u (%s) is not supported", bit, name);
    }
    uint8_t type = s->header_bytes > QH_COMPRESSION_TYPE ? s->header[QH_COMPRESSION_TYPE] : 0;
    if ((s->incompatible & QCOW2_INCOMPAT_COMPRESSION) && type != 0)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "QCOW2 compression type %u (%s) is not supported; zlib is", type,
                           type == 1 ? "zstd" : "unknown");
    if (type != 0)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 compression type %u without its incompatible feature bit",
                           type); /* QEMU refuses it too */
    return RT_OK;
}

static int parse_header(rt_vd_t vd, struct qcow2 *s, uint64_t file_size, rt_vd_error_t *err)
{
    const uint8_t *h = s->header;
    if (vd_be32(h + QH_MAGIC) != QCOW2_MAGIC)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "not a QCOW2 image (magic 0x%08x)",
                           vd_be32(h + QH_MAGIC));
    s->version = vd_be32(h + QH_VERSION);
    if (s->version != 2 && s->version != 3)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "QCOW2 version %u is not supported (2 and 3 are)",
                           s->version);
    s->cluster_bits = vd_be32(h + QH_CLUSTER_BITS);
    if (s->cluster_bits < 9 || s->cluster_bits > 21)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 cluster bits %u outside 9..21 (512 B to 2 MiB)",
                           s->cluster_bits);
    s->cluster_size = 1u << s->cluster_bits;
    s->l2_bits = s->cluster_bits - 3;
    s->l2_entries = 1u << s->l2_bits;
    uint32_t header_length = QH_V2_LENGTH;
    s->refcount_order = 4;
    if (s->version == 3) {
        if (file_size < QH_V3_LENGTH)
            return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                               "file of %llu bytes is too small for a QCOW2 version 3 header",
                               (unsigned long long)file_size);
        header_length = vd_be32(h + QH_HEADER_LENGTH);
        if (header_length < QH_V3_LENGTH || header_length > s->cluster_size || header_length % 8)
            return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "QCOW2 header length %u is invalid",
                               header_length);
        s->incompatible = vd_be64(h + QH_INCOMPATIBLE);
        s->compatible = vd_be64(h + QH_COMPATIBLE);
        s->autoclear = vd_be64(h + QH_AUTOCLEAR);
        s->refcount_order = vd_be32(h + QH_REFCOUNT_ORDER);
        if (s->refcount_order > 6)
            return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "QCOW2 refcount order %u is above 6",
                               s->refcount_order);
    }
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX : (1ull << s->refcount_bits) - 1;
    s->rb_entries = (uint32_t)((uint64_t)s->cluster_size * 8u / s->refcount_bits);

    /* Extensions end where the backing name starts, or at the end of cluster 0. */
    uint64_t backing_offset = vd_be64(h + QH_BACKING_OFFSET);
    uint32_t backing_size = vd_be32(h + QH_BACKING_SIZE);
    uint32_t ext_end = s->cluster_size;
    if (backing_offset != 0) {
        if (backing_size == 0 || backing_size > QCOW2_MAX_BACKING_NAME ||
            !vd_inside(backing_offset, backing_size, s->cluster_size) ||
            backing_offset < header_length)
            return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                               "QCOW2 backing file name (%u bytes at %llu) is not inside cluster 0 "
                               "after the header, or longer than %u bytes",
                               backing_size, (unsigned long long)backing_offset,
                               QCOW2_MAX_BACKING_NAME);
        memcpy(s->backing_name, h + backing_offset, backing_size);
        s->backing_name[backing_size] = '\0';
        if (strlen(s->backing_name) != backing_size)
            return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "QCOW2 backing file name contains a NUL");
        ext_end = (uint32_t)backing_offset;
    }
    s->header_bytes = header_length; /* check_features() reads the compression type */
    int rc = parse_extensions(s, header_length, ext_end, err);
    if (rc != RT_OK)
        return rc;
    if ((rc = check_features(s, err)) != RT_OK)
        return rc;
    uint32_t crypt = vd_be32(h + QH_CRYPT);
    if (crypt != 0)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "QCOW2 encryption (method %u) is not supported",
                           crypt);

    s->size = vd_be64(h + QH_SIZE);
    if (s->size > (1ull << 61))
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "QCOW2 virtual size %llu is implausibly large",
                           (unsigned long long)s->size);
    uint64_t l1_span = (uint64_t)s->cluster_size << s->l2_bits; /* bytes per L1 entry */
    uint64_t l1_needed = (s->size + l1_span - 1) / l1_span;
    s->l1_size = vd_be32(h + QH_L1_SIZE);
    s->l1_offset = vd_be64(h + QH_L1_OFFSET);
    if (s->l1_size < l1_needed)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 L1 table has %u entries, the virtual size needs %llu", s->l1_size,
                           (unsigned long long)l1_needed);
    if ((uint64_t)s->l1_size * 8u > QCOW2_MAX_L1_BYTES)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "QCOW2 L1 table of %u entries is too large",
                           s->l1_size);
    if (s->l1_offset % s->cluster_size != 0 || (s->l1_offset == 0 && s->l1_size > 0) ||
        !vd_table_inside(s->l1_offset, s->l1_size, 8, file_size, NULL))
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 L1 table offset 0x%llx is unaligned or the table runs past the "
                           "end of the file",
                           (unsigned long long)s->l1_offset);

    s->rt_offset = vd_be64(h + QH_RT_OFFSET);
    s->rt_clusters = vd_be32(h + QH_RT_CLUSTERS);
    if (s->rt_clusters == 0 || (uint64_t)s->rt_clusters * s->cluster_size > QCOW2_MAX_RT_BYTES)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "QCOW2 refcount table of %u clusters is invalid",
                           s->rt_clusters);
    /* Wholly inside the file: the allocator starts at the end of the file, so a table
     * reaching past it would be handed out as data. */
    if (s->rt_offset % s->cluster_size != 0 || s->rt_offset == 0 ||
        !vd_table_inside(s->rt_offset, s->rt_clusters, s->cluster_size, file_size, NULL))
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 refcount table offset 0x%llx (%u clusters) is unaligned or the "
                           "table runs past the end of the file (%llu bytes)",
                           (unsigned long long)s->rt_offset, s->rt_clusters,
                           (unsigned long long)file_size);
    uint64_t l1_end = s->l1_offset + (uint64_t)s->l1_size * 8u;
    uint64_t rt_end = s->rt_offset + (uint64_t)s->rt_clusters * s->cluster_size;
    if (s->l1_size > 0 && s->l1_offset < rt_end && s->rt_offset < l1_end)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "QCOW2 L1 table overlaps the refcount table");

    s->nb_snapshots = vd_be32(h + QH_NB_SNAPSHOTS);
    s->snapshots_offset = vd_be64(h + QH_SNAPSHOTS_OFFSET);
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS ||
        (s->nb_snapshots > 0 &&
         (s->snapshots_offset % s->cluster_size != 0 || s->snapshots_offset >= file_size)))
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "QCOW2 snapshot table (%u entries at 0x%llx) is invalid",
                           s->nb_snapshots, (unsigned long long)s->snapshots_offset);
    s->header_bytes = header_length;
    return RT_OK;
}

static int load_tables(rt_vd_t vd, struct qcow2 *s, uint64_t file_size, rt_vd_error_t *err)
{
    size_t l1_bytes = (size_t)s->l1_size * 8u;
    uint8_t *raw = malloc(l1_bytes ? l1_bytes : 1);
    s->l1 = calloc(s->l1_size ? s->l1_size : 1, sizeof(*s->l1));
    s->l2 = calloc(s->l1_size ? s->l1_size : 1, sizeof(*s->l2));
    s->l2_rewritten = calloc(s->l1_size ? s->l1_size : 1, 1);
    if (raw == NULL || s->l1 == NULL || s->l2 == NULL || s->l2_rewritten == NULL) {
        free(raw);
        return RT_ERR_NO_MEMORY;
    }
    int rc = l1_bytes ? rt__vd_meta_read(vd, s->l1_offset, raw, l1_bytes) : RT_OK;
    for (uint32_t i = 0; rc == RT_OK && i < s->l1_size; i++) {
        s->l1[i] = vd_be64(raw + 8u * i);
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if ((s->l1[i] & QCOW2_L1_RESERVED) != 0 || l2 % s->cluster_size != 0 ||
            (l2 != 0 && !vd_inside(l2, s->cluster_size, file_size)))
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 L1 entry %u (0x%016llx) is unaligned, has reserved bits set or "
                             "points past the end of the file",
                             i, (unsigned long long)s->l1[i]);
    }
    free(raw);
    if (rc != RT_OK)
        return rc;

    s->rt_entries = (uint64_t)s->rt_clusters * s->cluster_size / 8u;
    raw = malloc((size_t)s->rt_entries * 8u);
    s->rt = calloc((size_t)s->rt_entries, sizeof(*s->rt));
    s->rblocks = calloc((size_t)s->rt_entries, sizeof(*s->rblocks));
    if (raw == NULL || s->rt == NULL || s->rblocks == NULL) {
        free(raw);
        return RT_ERR_NO_MEMORY;
    }
    rc = rt__vd_meta_read(vd, s->rt_offset, raw, (size_t)s->rt_entries * 8u);
    for (uint64_t i = 0; rc == RT_OK && i < s->rt_entries; i++) {
        s->rt[i] = vd_be64(raw + 8u * i);
        if (s->rt[i] % s->cluster_size != 0 ||
            (s->rt[i] != 0 && !vd_inside(s->rt[i], s->cluster_size, file_size)))
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 refcount table entry %llu (0x%llx) is unaligned or points past "
                             "the end of the file",
                             (unsigned long long)i, (unsigned long long)s->rt[i]);
    }
    free(raw);
    return rc;
}

static void free_state(struct qcow2 *s)
{
    if (s->l2 != NULL)
        for (uint32_t i = 0; i < s->l1_size; i++)
            if (s->l2[i] != NULL) {
                free(s->l2[i]->entries);
                free(s->l2[i]);
            }
    if (s->rblocks != NULL)
        for (uint64_t i = 0; i < s->rt_entries; i++)
            free(s->rblocks[i].data);
    free(s->l2);
    free(s->l1);
    free(s->rt);
    free(s->rblocks);
    free(s->header);
    free(s->features);
    free(s->pending);
    free(s->decrements);
    free(s->inflated);
    free(s->metadata);
    free(s->new_metadata);
    free(s->l2_rewritten);
    free(s);
}

static const rt_vd_option_t open_options[] = {
    {"l2-cache-size", "a size (default 32M)",
     "the most memory the cache of L2 tables takes; clean tables beyond it are dropped"},
    {NULL, NULL, NULL},
};

static const rt_vd_option_t create_options[] = {
    {"refcount_bits", "1, 2, 4, 8, 16, 32 or 64 (default 16)",
     "the width of a cluster's reference count; other than 16 needs compat=1.1"},
    {NULL, NULL, NULL},
};

/* Reads the image's state from the file as it is now: header, L1 and refcount tables,
 * the metadata index.  Opens nothing (the backing file is the caller's). */
static int load_state(rt_vd_t vd, uint64_t cache, struct qcow2 **out, rt_vd_error_t *err)
{
    uint64_t file_size = 0;
    int rc = rt_file_get_size(vd->file, &file_size);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot read the file size");
    if (file_size < QH_V2_LENGTH)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "file of %llu bytes is too small for a QCOW2 header",
                           (unsigned long long)file_size);
    struct qcow2 *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return RT_ERR_NO_MEMORY;
    uint8_t first[QH_V2_LENGTH];
    rc = rt__vd_meta_read(vd, 0, first, sizeof(first));
    uint32_t bits = vd_be32(first + QH_CLUSTER_BITS);
    if (rc == RT_OK && bits >= 9 && bits <= 21) {
        /* Cluster 0 holds the extensions and the backing name; the file may end
         * inside it (a v2 image of just a header). */
        uint32_t cluster = 1u << bits;
        s->header = calloc(1, cluster);
        if (s->header == NULL)
            rc = RT_ERR_NO_MEMORY;
        else
            rc = rt__vd_meta_read(vd, 0, s->header,
                                  (size_t)(file_size < cluster ? file_size : cluster));
    } else if (rc == RT_OK) {
        s->header = calloc(1, QH_V2_LENGTH);
        if (s->header == NULL)
            rc = RT_ERR_NO_MEMORY;
        else
            memcpy(s->header, first, QH_V2_LENGTH);
    }
    if (rc != RT_OK)
        rt__vd_fail(err, rc, "cannot read the QCOW2 header");
    else if ((rc = parse_header(vd, s, file_size, err)) == RT_OK &&
             (rc = load_tables(vd, s, file_size, err)) == RT_OK)
        rc = rt__qcow2_index_metadata(vd, s, file_size, err);
    if (rc != RT_OK) {
        free_state(s);
        return rc;
    }
    s->file_size_at_open = file_size;
    s->l2_cache_bytes = cache;
    s->next_free = (file_size + s->cluster_size - 1) & ~(uint64_t)(s->cluster_size - 1);
    s->file_grown = file_size;
    *out = s;
    return RT_OK;
}

static int qcow2_open(rt_vd_t vd, const char *const *options, rt_vd_error_t *err)
{
    uint64_t cache = L2_CACHE_BYTES;
    const char *cache_text = rt__vd_option(options, "l2-cache-size");
    if (cache_text != NULL && !rt__vd_parse_size(cache_text, &cache))
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "l2-cache-size: '%s' is not a size",
                           cache_text);
    struct qcow2 *s = NULL;
    int rc = load_state(vd, cache, &s, err);
    if (rc != RT_OK)
        return rc;
    if (!vd->read_only) {
        if (s->incompatible & QCOW2_INCOMPAT_CORRUPT)
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 image is marked corrupt; it opens read-only only");
        else if (s->incompatible & QCOW2_INCOMPAT_DIRTY)
            rc = rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                             "QCOW2 image is marked dirty (lazy refcounts); repair it with "
                             "'qemu-img check -r all' before writing");
    }
    if (rc == RT_OK && s->backing_name[0] != '\0')
        rc = rt__vd_open_backing(vd, s->backing_name,
                                 s->backing_format[0] ? s->backing_format : NULL, err);
    if (rc != RT_OK) {
        free_state(s);
        return rc;
    }
    vd->priv = s;
    vd->size = s->size;
    vd->alloc_unit = s->cluster_size;
    uint64_t bits_align = (uint64_t)s->cluster_size | 4096u;
    vd->data_align = (uint32_t)(bits_align & -bits_align);
    return RT_OK;
}

int rt__qcow2_reload(rt_vd_t vd, rt_vd_error_t *err)
{
    struct qcow2 *old = qcow2_of(vd);
    rt__qcow2_trim_file(vd);
    struct qcow2 *s = NULL;
    int rc = load_state(vd, old->l2_cache_bytes, &s, err);
    if (rc != RT_OK) {
        /* What memory holds no longer matches the file: nothing may be read or written
         * through it, and close must not trim the file by it. */
        if (vd->poisoned == RT_OK)
            vd->poisoned = rc;
        vd->lost_state = rc;
        old->file_grown = old->file_size_at_open;
        return rc;
    }
    free_state(old);
    vd->priv = s;
    vd->size = s->size;
    return RT_OK;
}

/* Autoclear bits name features whose data we would not keep up to date (bitmaps):
 * clearing them, durably, before the first write of guest data tells the next reader
 * not to trust that data.  Until then (reads, a leak repair) they stay valid. */
static int qcow2_begin_write(rt_vd_t vd)
{
    struct qcow2 *s = qcow2_of(vd);
    if (s->version != 3 || s->autoclear == 0)
        return RT_OK;
    uint64_t keep = s->autoclear;
    s->autoclear = 0;
    int rc = rt__qcow2_header_write(vd);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc != RT_OK)
        s->autoclear = keep;
    return rc;
}

static void qcow2_close(rt_vd_t vd)
{
    rt__qcow2_trim_file(vd);
    free_state(qcow2_of(vd));
    vd->priv = NULL;
}

/* ---------------------------------------------------------------------------------- */
/* Map and reads. */

/* The metadata cache holds L2 tables up to this many bytes; beyond, clean tables are
 * dropped (clock order) to make room.  Tables with changes not yet in the file stay. */

static bool evict_one(struct qcow2 *s, uint32_t keep)
{
    for (uint32_t n = 0; n < s->l1_size; n++) {
        uint32_t i = s->evict_hand;
        s->evict_hand = (s->evict_hand + 1) % s->l1_size;
        struct qcow2_l2 *t = s->l2[i];
        if (i == keep || t == NULL || t->dirty || t->pending > 0)
            continue;
        free(t->entries);
        free(t);
        s->l2[i] = NULL;
        s->l2_loaded--;
        return true;
    }
    return false;
}

void rt__qcow2_trim_cache(struct qcow2 *s, uint32_t keep, uint32_t extra)
{
    while ((uint64_t)(s->l2_loaded + extra) * s->cluster_size > s->l2_cache_bytes &&
           evict_one(s, keep))
        ;
}

/* An L2 entry as read from the file: inside @a limit, never into metadata (a write in
 * place there would destroy it), no reserved bits.  For a table as the image had it,
 * @a limit is the file's size at open: an entry past it is corrupt even if that cluster
 * has been handed out since.  For a table this driver wrote, it is the allocator's
 * mark, below which the clusters it handed out lie. */
static bool entry_valid(const struct qcow2 *s, uint64_t entry, uint64_t limit)
{
    if (entry & QCOW2_COMPRESSED) {
        uint64_t host, bytes;
        rt__qcow2_compressed_span(s, entry, &host, &bytes);
        if (host >= limit || bytes > limit - host + 511u) /* the last sector may be cut */
            return false;
        for (uint64_t c = host >> s->cluster_bits; c <= (host + bytes - 1) >> s->cluster_bits; c++)
            if (rt__qcow2_is_metadata(s, c))
                return false;
        return true;
    }
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    uint64_t reserved = ~(QCOW2_OFFSET_MASK | QCOW2_COPIED | (s->version == 3 ? QCOW2_ZERO : 0));
    if ((entry & reserved) != 0 || host % s->cluster_size != 0)
        return false;
    if (host == 0)
        return true;
    /* The file may end inside the last data cluster (QEMU skips writing zeros). */
    return host < limit && !rt__qcow2_is_metadata(s, host >> s->cluster_bits);
}

/* Makes the L2 table of @a l1_index, read from the file as @a raw, the cached one:
 * every entry checked first. */
static struct qcow2_l2 *l2_install(struct qcow2 *s, uint32_t l1_index, const uint8_t *raw,
                                   int *rc)
{
    uint64_t host = s->l1[l1_index] & QCOW2_OFFSET_MASK;
    rt__qcow2_trim_cache(s, l1_index, 1);
    struct qcow2_l2 *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->entries = malloc(s->cluster_size)) == NULL) {
        free(t);
        *rc = RT_ERR_NO_MEMORY;
        return NULL;
    }
    uint64_t limit = s->l2_rewritten[l1_index] ? s->next_free : s->file_size_at_open;
    for (uint32_t i = 0; i < s->l2_entries; i++) {
        t->entries[i] = vd_be64(raw + 8u * i);
        if (!entry_valid(s, t->entries[i], limit)) {
            free(t->entries);
            free(t);
            *rc = RT_ERR_VD_CORRUPT;
            return NULL;
        }
    }
    t->host_off = host;
    s->l2[l1_index] = t;
    s->l2_loaded++;
    *rc = RT_OK;
    return t;
}

struct qcow2_l2 *rt__qcow2_l2_get(rt_vd_t vd, uint32_t l1_index, int *rc)
{
    struct qcow2 *s = qcow2_of(vd);
    *rc = RT_OK;
    if (s->l2[l1_index] != NULL)
        return s->l2[l1_index];
    uint64_t host = s->l1[l1_index] & QCOW2_OFFSET_MASK;
    if (host == 0)
        return NULL;
    uint8_t *raw = malloc(s->cluster_size);
    if (raw == NULL) {
        *rc = RT_ERR_NO_MEMORY;
        return NULL;
    }
    struct qcow2_l2 *t = NULL;
    *rc = rt__vd_meta_read(vd, host, raw, s->cluster_size);
    if (*rc == RT_OK)
        t = l2_install(s, l1_index, raw, rc);
    free(raw);
    return t;
}

/* Tables that cannot be evicted (changed since the last commit) have pushed the cache
 * past its size, or the list of allocations to commit is as large. */
static bool qcow2_needs_writeback(rt_vd_t vd)
{
    const struct qcow2 *s = qcow2_of(vd);
    return (uint64_t)s->l2_loaded * s->cluster_size > s->l2_cache_bytes ||
           (uint64_t)s->pending_len * sizeof(struct qcow2_pending) > s->l2_cache_bytes;
}

static int qcow2_load_done(rt_vd_t vd, const struct vd_load *load, const void *data, int status)
{
    struct qcow2 *s = qcow2_of(vd);
    if (status != RT_OK)
        return status;
    uint32_t l1_index = (uint32_t)load->key;
    /* Loaded another way meanwhile (an allocation reads its table synchronously), or
     * the table moved: what is in memory, or the next map, is the truth. */
    if (l1_index >= s->l1_size || s->l2[l1_index] != NULL ||
        (s->l1[l1_index] & QCOW2_OFFSET_MASK) != load->host_off)
        return RT_OK;
    /* A table written meanwhile (a commit, then evicted clean) may have been read as it
     * was before: its waiters map again and read it afresh. */
    if (load->gen != s->l2_writes)
        return RT_OK;
    int rc;
    l2_install(s, l1_index, data, &rc);
    return rc;
}

/* Classifies one L2 entry; checks what it points at. */
static int classify(rt_vd_t vd, uint64_t entry, struct vd_map *map)
{
    struct qcow2 *s = qcow2_of(vd);
    if (entry & QCOW2_COMPRESSED) {
        uint64_t host, bytes;
        rt__qcow2_compressed_span(s, entry, &host, &bytes);
        if (host > s->next_free || bytes > s->next_free - host)
            return RT_ERR_VD_CORRUPT;
        map->kind = VD_MAP_COMPRESSED;
        map->host_off = host;
        map->stored_len = bytes;
        return RT_OK;
    }
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    if ((entry & ~(QCOW2_OFFSET_MASK | QCOW2_COPIED | QCOW2_ZERO)) != 0 ||
        host % s->cluster_size != 0)
        return RT_ERR_VD_CORRUPT;
    if ((entry & QCOW2_ZERO) && s->version == 3) {
        map->kind = VD_MAP_ZERO;
        return RT_OK;
    }
    if (host == 0) {
        map->kind = VD_MAP_UNALLOCATED;
        return RT_OK;
    }
    if (host >= s->next_free)
        return RT_ERR_VD_CORRUPT; /* past what the file held at open */
    map->kind = VD_MAP_DATA;
    map->host_off = host;
    map->shared = !(entry & QCOW2_COPIED);
    return RT_OK;
}

static int qcow2_map(rt_vd_t vd, uint64_t off, uint64_t len, struct vd_map *map,
                     struct vd_load *load)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t cluster = off >> s->cluster_bits;
    uint32_t l1_index = (uint32_t)(cluster >> s->l2_bits);
    uint32_t l2_index = (uint32_t)(cluster & (s->l2_entries - 1));
    uint64_t in_cluster = off & (s->cluster_size - 1);
    uint64_t to_table_end = ((uint64_t)(s->l2_entries - l2_index) << s->cluster_bits) - in_cluster;
    int rc;
    uint64_t table = s->l1[l1_index] & QCOW2_OFFSET_MASK;
    if (load != NULL && table != 0 && s->l2[l1_index] == NULL) {
        load->file = 0;
        load->host_off = table;
        load->len = s->cluster_size;
        load->key = l1_index;
        load->gen = s->l2_writes;
        return VD_MAP_NEEDS_LOAD;
    }
    struct qcow2_l2 *t = rt__qcow2_l2_get(vd, l1_index, &rc);
    if (rc != RT_OK)
        return rc;
    map->shared = false;
    if (t == NULL) {
        map->kind = VD_MAP_UNALLOCATED;
        map->length = to_table_end < len ? to_table_end : len;
        return RT_OK;
    }
    if ((rc = classify(vd, t->entries[l2_index], map)) != RT_OK)
        return rc;
    uint64_t length = s->cluster_size - in_cluster;
    if (map->kind == VD_MAP_DATA)
        map->host_off += in_cluster;
    /* Following clusters answer together when they are the same (and, for data,
     * contiguous in the file with the same sharing). */
    uint64_t expect = map->kind == VD_MAP_DATA ? map->host_off - in_cluster : 0;
    while (map->kind != VD_MAP_COMPRESSED && length < len && ++l2_index < s->l2_entries) {
        struct vd_map next = {0};
        if (classify(vd, t->entries[l2_index], &next) != RT_OK || next.kind != map->kind)
            break;
        if (next.kind == VD_MAP_DATA &&
            (next.host_off != (expect += s->cluster_size) || next.shared != map->shared))
            break;
        length += s->cluster_size;
    }
    map->length = length < len ? length : len;
    return RT_OK;
}

static int inflate_cluster(struct qcow2 *s, const uint8_t *in, uint64_t in_len, uint8_t *out)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    /* Raw deflate (no zlib header), as QEMU writes it; -15 accepts every window size. */
    if (inflateInit2(&z, -15) != Z_OK)
        return RT_ERR_NO_MEMORY;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = s->cluster_size;
    int zrc = inflate(&z, Z_FINISH);
    bool complete = z.avail_out == 0 || zrc == Z_STREAM_END;
    inflateEnd(&z);
    /* QEMU accepts a stream that fills the cluster before its end marker. */
    return (zrc == Z_STREAM_END || zrc == Z_OK || zrc == Z_BUF_ERROR) && complete && z.avail_out == 0
               ? RT_OK
               : RT_ERR_VD_CORRUPT;
}

static int qcow2_read_compressed(rt_vd_t vd, const struct vd_map *map, uint64_t in_unit,
                                 void *buf, size_t len)
{
    struct qcow2 *s = qcow2_of(vd);
    if (map->kind != VD_MAP_COMPRESSED || in_unit > s->cluster_size ||
        len > s->cluster_size - in_unit)
        return RT_ERR_VD_CORRUPT;
    if (s->inflated == NULL && (s->inflated = malloc(s->cluster_size)) == NULL)
        return RT_ERR_NO_MEMORY;
    /* Stored bytes are never rewritten in place while the image is open (the allocator
     * never reuses a cluster), so where they are names what they inflate to. */
    if (!s->inflated_valid || s->inflated_host != map->host_off) {
        uint64_t host = map->host_off, bytes = map->stored_len;
        uint8_t *in = malloc((size_t)bytes);
        if (in == NULL)
            return RT_ERR_NO_MEMORY;
        /* The last sector of compressed data may be cut by the end of the file. */
        uint64_t avail = s->next_free - host < bytes ? s->next_free - host : bytes;
        memset(in, 0, (size_t)bytes);
        int rc = rt__vd_meta_read(vd, host, in, (size_t)avail);
        if (rc == RT_ERR_EOF)
            rc = RT_OK;
        if (rc == RT_OK)
            rc = inflate_cluster(s, in, bytes, s->inflated);
        free(in);
        s->inflated_valid = rc == RT_OK;
        s->inflated_host = host;
        if (rc != RT_OK)
            return rc;
    }
    memcpy(buf, s->inflated + in_unit, len);
    return RT_OK;
}

static void qcow2_info(rt_vd_t vd, rt_vd_info_t *info)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t blocks = (s->size + s->cluster_size - 1) >> s->cluster_bits;
    info->block_size = s->cluster_size;
    info->blocks_total = blocks;
    snprintf(info->variant, sizeof(info->variant), "%s", s->version == 2 ? "v2" : "v3");
    info->refcount_bits = s->refcount_bits;
    snprintf(info->compression, sizeof(info->compression), "zlib"); /* the only one opened */
    if (s->incompatible & QCOW2_INCOMPAT_DIRTY)
        info->flags |= RT_VD_INFO_DIRTY;
    if (s->incompatible & QCOW2_INCOMPAT_CORRUPT)
        info->flags |= RT_VD_INFO_CORRUPT;
    if (s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS)
        info->flags |= RT_VD_INFO_LAZY_REFCOUNTS;
    /* Only the L1 entries the virtual size needs are the disk's, and each table is read
     * once however many of them name it: the work is bounded by the disk, not by what
     * a hostile L1 table repeats. */
    uint64_t needed = (blocks + s->l2_entries - 1) >> s->l2_bits;
    uint32_t count;
    struct qcow2_l1_ref *refs =
        rt__qcow2_l1_by_table(s->l1, needed < s->l1_size ? (uint32_t)needed : s->l1_size, &count);
    if (refs == NULL)
        return; /* out of memory: nothing counted */
    for (uint32_t a = 0, b; a < count; a = b) {
        int rc;
        const struct qcow2_l2 *t = rt__qcow2_l2_get(vd, refs[a].index, &rc);
        b = qcow2_group_end(refs, count, a);
        if (t != NULL)
            info->blocks_allocated +=
                rt__qcow2_allocated_through(s, t->entries, refs + a, b - a, blocks);
    }
    free(refs);
}

const struct vd_driver rt__vd_qcow2_driver = {
    .name = "qcow2",
    .caps = VD_CAP_CREATE | VD_CAP_WRITE | VD_CAP_ALLOC | VD_CAP_COMPRESSED_READ |
            VD_CAP_COMPRESSED_WRITE | VD_CAP_CHECK | VD_CAP_BACKING | VD_CAP_VERSION,
    .create_options = create_options,
    .open_options = open_options,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create = rt__qcow2_create,
    .map = qcow2_map,
    .alloc = rt__qcow2_alloc,
    .alloc_done = rt__qcow2_alloc_done,
    .commit = rt__qcow2_commit,
    .read_compressed = qcow2_read_compressed,
    .load_done = qcow2_load_done,
    .needs_writeback = qcow2_needs_writeback,
    .begin_write = qcow2_begin_write,
    .check = rt__qcow2_check,
    .info = qcow2_info,
    .write_compressed = rt__qcow2_write_compressed,
    .zero = rt__qcow2_zero,
    .resize = rt__qcow2_resize,
    .snapshot_list = rt__qcow2_snapshot_list,
    .snapshot_create = rt__qcow2_snapshot_create,
    .snapshot_apply = rt__qcow2_snapshot_apply,
    .snapshot_delete = rt__qcow2_snapshot_delete,
    .set_backing = rt__qcow2_set_backing,
    .make_empty = rt__qcow2_make_empty,
    .measure = rt__qcow2_measure,
    .unit_of = rt__qcow2_unit_of,
};
