/*
 * New QCOW2 images, laid out as QEMU lays them out:
 *
 *   cluster 0        header, extensions (backing format, feature names), backing name
 *   refcount table   enough clusters for the refcount blocks below
 *   refcount blocks  enough to count every cluster of this metadata
 *   L1 table         one entry per L2 table the virtual size needs, all empty
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "vd/qcow2.h"

#define DEFAULT_CLUSTER (64u << 10)

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

bool rt__qcow2_put_extension(uint8_t *h, uint32_t room, uint32_t *at, uint32_t type,
                             const void *data, size_t len)
{
    uint64_t padded = ((uint64_t)len + 7u) & ~7ull;
    if (!vd_inside(*at, 8u + padded, room))
        return false;
    vd_put_be32(h + *at, type);
    vd_put_be32(h + *at + 4, (uint32_t)len);
    memcpy(h + *at + 8, data, len);
    *at += (uint32_t)(8u + padded);
    return true;
}

static const struct {
    uint8_t type, bit;
    const char *name;
} feature_names[] = {
    {0, 0, "dirty bit"},          {0, 1, "corrupt bit"},       {0, 2, "external data file"},
    {0, 3, "compression type"},   {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},            {2, 1, "raw external data"},
};

/* The shape create and measure share: cluster size, version, refcount order. */
struct shape {
    uint32_t cluster, version, order;
};

static int parse_shape(const rt_vd_create_opts_t *opts, struct shape *sh, rt_vd_error_t *err)
{
    sh->cluster = opts->block_size ? opts->block_size : DEFAULT_CLUSTER;
    if ((sh->cluster & (sh->cluster - 1)) != 0 || sh->cluster < 512 || sh->cluster > (2u << 20))
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "QCOW2 cluster size %u is not a power of two in 512..2097152",
                           sh->cluster);
    sh->version = opts->version ? opts->version : 3;
    if (sh->version != 2 && sh->version != 3)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "QCOW2 version %u does not exist (2 is compat=0.10, 3 is compat=1.1)",
                           sh->version);
    sh->order = 4; /* 16-bit refcounts */
    const char *width = rt__vd_option(opts->options, "refcount_bits");
    if (width != NULL) {
        uint64_t value = 0;
        if (!rt__vd_parse_size(width, &value) || value == 0 || value > 64 ||
            (value & (value - 1)) != 0)
            return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                               "refcount_bits: '%s' is not 1, 2, 4, 8, 16, 32 or 64", width);
        for (sh->order = 0; (1u << sh->order) < value; sh->order++)
            ;
        if (sh->version == 2 && sh->order != 4)
            return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                               "refcount_bits other than 16 needs compat=1.1 (version 3)");
    }
    return RT_OK;
}

uint64_t rt__qcow2_unit_of(const rt_vd_create_opts_t *opts)
{
    return opts->block_size ? opts->block_size : DEFAULT_CLUSTER;
}

/* Refcount table and blocks for @a clusters clusters and themselves. */
static uint64_t refcount_metadata(uint64_t clusters, const struct shape *sh)
{
    uint64_t per_table_cluster = sh->cluster / 8u;
    uint64_t per_block = (uint64_t)sh->cluster * 8u >> sh->order;
    uint64_t table = 0, blocks = 0, total = 0, last;
    do {
        last = total;
        blocks = div_up(clusters + table + blocks, per_block);
        table = div_up(blocks, per_table_cluster);
        total = clusters + blocks + table;
    } while (total != last);
    return (blocks + table) * sh->cluster;
}

int rt__qcow2_measure(const rt_vd_create_opts_t *opts, uint64_t data, rt_vd_measure_t *out,
                      rt_vd_error_t *err)
{
    struct shape sh;
    int rc = parse_shape(opts, &sh, err);
    if (rc != RT_OK)
        return rc;
    uint64_t aligned = div_up(opts->size, sh.cluster) * sh.cluster;
    /* As a fully allocated image lays out: header, L2 tables for every cluster, the L1
     * table naming them, and the refcounts of all of it (whole clusters each). */
    uint64_t per_table = sh.cluster / 8u;
    uint64_t l2_entries = div_up(aligned / sh.cluster, per_table) * per_table;
    uint64_t l1_entries = div_up(l2_entries * 8u / sh.cluster, per_table) * per_table;
    uint64_t meta = sh.cluster + l2_entries * 8u + l1_entries * 8u;
    meta += refcount_metadata((meta + aligned) / sh.cluster, &sh);
    out->fully_allocated = meta + aligned;
    /* The metadata of a full image is counted either way (an overestimate, as
     * qemu-img's); only the data is what the source holds. */
    out->required = (opts->flags & RT_VD_CREATE_STATIC) ? out->fully_allocated : meta + data;
    return RT_OK;
}

int rt__qcow2_create(rt_file_t file, const rt_vd_create_opts_t *opts, rt_vd_error_t *err)
{
    struct shape sh;
    int rc = parse_shape(opts, &sh, err);
    if (rc != RT_OK)
        return rc;
    uint32_t cluster = sh.cluster, version = sh.version, order = sh.order;
    if (opts->flags & RT_VD_CREATE_STATIC)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "preallocated QCOW2 images are not supported");
    size_t backing_len = opts->backing_file ? strlen(opts->backing_file) : 0;
    if (backing_len > QCOW2_MAX_BACKING_NAME)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "backing file name longer than %u bytes",
                           QCOW2_MAX_BACKING_NAME);
    uint32_t bits = 0;
    while ((1u << bits) < cluster)
        bits++;
    uint32_t l2_entries = cluster / 8u;
    uint64_t l1_size = div_up(opts->size, (uint64_t)cluster * l2_entries);
    if (l1_size * 8u > QCOW2_MAX_L1_BYTES)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "size needs an L1 table above %u bytes: use bigger clusters",
                           QCOW2_MAX_L1_BYTES);
    /* An empty disk has no L1 table at all (offset 0), as qemu-img makes it: a cluster
     * held for it would be counted by nothing, a leak. */
    uint64_t l1_clusters = div_up(l1_size * 8u, cluster);

    /* Refcount blocks and table sized to count all of the metadata, themselves too. */
    uint64_t rb_entries = (uint64_t)cluster * 8u >> order;
    uint64_t blocks = 1, table = 1;
    for (;;) {
        uint64_t total = 1 + table + blocks + l1_clusters;
        uint64_t need_blocks = div_up(total, rb_entries);
        uint64_t need_table = div_up(need_blocks * 8u, cluster);
        if (need_blocks <= blocks && need_table <= table)
            break;
        blocks = need_blocks > blocks ? need_blocks : blocks;
        table = need_table > table ? need_table : table;
    }
    uint64_t rt_offset = cluster;
    uint64_t rb_offset = rt_offset + table * cluster;
    uint64_t l1_offset = l1_size > 0 ? rb_offset + blocks * cluster : 0;
    uint64_t total = 1 + table + blocks + l1_clusters;

    uint8_t *h = calloc(1, cluster);
    uint8_t *buf = calloc(1, cluster);
    if (h == NULL || buf == NULL) {
        free(h);
        free(buf);
        return RT_ERR_NO_MEMORY;
    }
    uint32_t header_length = version == 3 ? QH_V3_LENGTH_WITH_COMPRESSION : QH_V2_LENGTH;
    vd_put_be32(h + QH_MAGIC, QCOW2_MAGIC);
    vd_put_be32(h + QH_VERSION, version);
    vd_put_be32(h + QH_CLUSTER_BITS, bits);
    vd_put_be64(h + QH_SIZE, opts->size);
    vd_put_be32(h + QH_L1_SIZE, (uint32_t)l1_size);
    vd_put_be64(h + QH_L1_OFFSET, l1_offset);
    vd_put_be64(h + QH_RT_OFFSET, rt_offset);
    vd_put_be32(h + QH_RT_CLUSTERS, (uint32_t)table);
    if (version == 3) {
        vd_put_be32(h + QH_REFCOUNT_ORDER, order);
        vd_put_be32(h + QH_HEADER_LENGTH, header_length);
    }
    uint32_t at = header_length;
    /* Cluster 0 holds the header, the extensions, their end marker and the backing
     * name; the extensions get what the others leave. */
    rc = RT_OK;
    uint32_t room = 0;
    if ((uint64_t)header_length + 8u + backing_len > cluster)
        rc = rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                         "the backing file name (%zu bytes) does not fit in a %u-byte cluster "
                         "after the %u-byte header",
                         backing_len, cluster, header_length);
    else
        room = cluster - 8u - (uint32_t)backing_len;
    if (rc == RT_OK && opts->backing_format != NULL &&
        !rt__qcow2_put_extension(h, room, &at, QCOW2_EXT_BACKING_FMT, opts->backing_format,
                                 strlen(opts->backing_format)))
        rc = rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                         "the backing format name does not fit in a %u-byte cluster", cluster);
    if (rc == RT_OK && version == 3) {
        uint8_t table_data[sizeof(feature_names) / sizeof(feature_names[0]) * 48] = {0};
        for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++) {
            table_data[48 * i] = feature_names[i].type;
            table_data[48 * i + 1] = feature_names[i].bit;
            memcpy(table_data + 48 * i + 2, feature_names[i].name, strlen(feature_names[i].name));
        }
        /* Optional: small clusters may leave no room for it. */
        rt__qcow2_put_extension(h, room, &at, QCOW2_EXT_FEATURE_NAME, table_data,
                                sizeof(table_data));
    }
    if (rc == RT_OK && backing_len > 0) {
        at += 8; /* the end marker, already zero */
        vd_put_be64(h + QH_BACKING_OFFSET, at);
        vd_put_be32(h + QH_BACKING_SIZE, (uint32_t)backing_len);
        memcpy(h + at, opts->backing_file, backing_len);
    }
    if (rc == RT_OK)
        rc = rt_file_write_at(file, 0, h, cluster, NULL);

    /* The refcount table, a cluster at a time. */
    for (uint64_t c = 0; rc == RT_OK && c < table; c++) {
        memset(buf, 0, cluster);
        for (uint64_t i = 0; i < cluster / 8u; i++) {
            uint64_t block = c * (cluster / 8u) + i;
            if (block < blocks)
                vd_put_be64(buf + 8u * i, rb_offset + block * cluster);
        }
        rc = rt_file_write_at(file, rt_offset + c * cluster, buf, cluster, NULL);
    }
    /* The refcount blocks: 1 for each metadata cluster. */
    for (uint64_t b = 0; rc == RT_OK && b < blocks; b++) {
        memset(buf, 0, cluster);
        for (uint64_t i = 0; i < rb_entries; i++)
            if (b * rb_entries + i < total)
                rt__qcow2_entry_set(buf, order, i, 1);
        rc = rt_file_write_at(file, rb_offset + b * cluster, buf, cluster, NULL);
    }
    free(h);
    free(buf);
    if (rc != RT_OK)
        return rc;
    /* The L1 table is all zeros: extending the file writes it. */
    return rt_file_set_size(file, total * cluster);
}
