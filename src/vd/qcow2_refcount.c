/*
 * QCOW2 refcounts and the cluster allocator.
 *
 * Clusters are handed out from the end of the file (a bump allocator): a freed
 * cluster is never reused while the image is open, so a cluster that the file still
 * references from an older, committed table can never be handed out again before the
 * commit that drops the reference is durable.  Refcount blocks and table growth come
 * from the same allocator; the in-memory refcounts are always at least the number of
 * references the file holds, so writing them at any moment is safe.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "vd/qcow2.h"

/* Entry @a index of a refcount block of width 2^order bits. */
static uint64_t entry_get(const uint8_t *block, uint32_t order, uint64_t index)
{
    switch (order) {
    case 0:
    case 1:
    case 2: {
        uint32_t width = 1u << order;
        uint32_t per_byte = 8u / width;
        return (block[index / per_byte] >> (width * (index % per_byte))) & ((1u << width) - 1);
    }
    case 3:
        return block[index];
    case 4:
        return vd_be16(block + 2 * index);
    case 5:
        return vd_be32(block + 4 * index);
    default:
        return vd_be64(block + 8 * index);
    }
}

static void entry_set(uint8_t *block, uint32_t order, uint64_t index, uint64_t value)
{
    switch (order) {
    case 0:
    case 1:
    case 2: {
        uint32_t width = 1u << order;
        uint32_t per_byte = 8u / width;
        uint32_t shift = width * (uint32_t)(index % per_byte);
        uint8_t mask = (uint8_t)(((1u << width) - 1) << shift);
        block[index / per_byte] = (uint8_t)((block[index / per_byte] & ~mask) | (value << shift));
        break;
    }
    case 3:
        block[index] = (uint8_t)value;
        break;
    case 4:
        block[2 * index] = (uint8_t)(value >> 8);
        block[2 * index + 1] = (uint8_t)value;
        break;
    case 5:
        vd_put_be32(block + 4 * index, (uint32_t)value);
        break;
    default:
        vd_put_be64(block + 8 * index, value);
        break;
    }
}

int rt__qcow2_decrement_after(struct qcow2 *s, uint64_t cluster, uint32_t id)
{
    struct qcow2_decrement *grown = rt__vd_grow(s->decrements, &s->decrements_cap,
                                                s->decrements_len, sizeof(*grown), 64);
    if (grown == NULL)
        return RT_ERR_NO_MEMORY;
    s->decrements = grown;
    s->decrements[s->decrements_len++] = (struct qcow2_decrement){cluster, id};
    return RT_OK;
}

/* Makes the refcount table cover index @a needed: a bigger table at the end of the
 * file; the old one is freed once the header points at the new one. */
static int grow_table(rt_vd_t vd, struct qcow2 *s, uint64_t needed)
{
    uint64_t per_cluster = s->cluster_size / 8u;
    uint64_t entries = s->rt_entries * 2 > needed + 1 ? s->rt_entries * 2 : needed + 1;
    entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
    uint64_t clusters = entries / per_cluster;
    if (clusters * s->cluster_size > QCOW2_MAX_RT_BYTES)
        return RT_ERR_FILE_TOO_BIG;
    uint64_t *rt = realloc(s->rt, (size_t)entries * sizeof(*rt));
    if (rt == NULL)
        return RT_ERR_NO_MEMORY;
    s->rt = rt;
    struct qcow2_rblock *rblocks = realloc(s->rblocks, (size_t)entries * sizeof(*rblocks));
    if (rblocks == NULL)
        return RT_ERR_NO_MEMORY;
    s->rblocks = rblocks;
    memset(s->rt + s->rt_entries, 0, (size_t)(entries - s->rt_entries) * sizeof(*rt));
    memset(s->rblocks + s->rt_entries, 0,
           (size_t)(entries - s->rt_entries) * sizeof(*rblocks));
    for (uint64_t c = 0; c < s->rt_clusters; c++) {
        int rc = rt__qcow2_decrement_after(s, (s->rt_offset >> s->cluster_bits) + c, 0);
        if (rc != RT_OK)
            return rc;
    }
    s->rt_entries = entries;
    s->rt_offset = s->next_free;
    s->rt_clusters = (uint32_t)clusters;
    s->next_free += clusters * s->cluster_size;
    s->rt_dirty = true;
    s->header_dirty = true;
    for (uint64_t c = 0; c < clusters; c++) {
        int rc = rt__qcow2_refcount_add(vd, (s->rt_offset >> s->cluster_bits) + c, 1);
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}

/* The refcount block at table index @a index: loaded, or (with @a create) new. */
static int block_get(rt_vd_t vd, struct qcow2 *s, uint64_t index, bool create,
                     struct qcow2_rblock **out)
{
    *out = NULL;
    struct qcow2_rblock *b = &s->rblocks[index];
    if (b->data != NULL) {
        *out = b;
        return RT_OK;
    }
    if (s->rt[index] == 0 && !create)
        return RT_OK;
    uint8_t *data = calloc(1, s->cluster_size);
    if (data == NULL)
        return RT_ERR_NO_MEMORY;
    if (s->rt[index] != 0) {
        int rc = rt__vd_meta_read(vd, s->rt[index], data, s->cluster_size);
        if (rc != RT_OK) {
            free(data);
            return rc;
        }
        /* The table may have moved the array under us: reload the pointer. */
        s->rblocks[index].data = data;
        *out = &s->rblocks[index];
        return RT_OK;
    }
    /* A new block, counted in itself when it covers its own cluster. */
    uint64_t host = s->next_free;
    s->next_free += s->cluster_size;
    s->rt[index] = host;
    s->rt_dirty = true;
    s->rblocks[index].data = data;
    s->rblocks[index].dirty = true;
    int rc = rt__qcow2_refcount_add(vd, host >> s->cluster_bits, 1);
    *out = &s->rblocks[index];
    return rc;
}

int rt__qcow2_refcount_get(rt_vd_t vd, uint64_t cluster, uint64_t *refcount)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t index = cluster / s->rb_entries;
    *refcount = 0;
    if (index >= s->rt_entries)
        return RT_OK;
    struct qcow2_rblock *b;
    int rc = block_get(vd, s, index, false, &b);
    if (rc != RT_OK || b == NULL)
        return rc;
    *refcount = entry_get(b->data, s->refcount_order, cluster % s->rb_entries);
    return RT_OK;
}

int rt__qcow2_refcount_add(rt_vd_t vd, uint64_t cluster, int64_t delta)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t index = cluster / s->rb_entries;
    int rc;
    if (index >= s->rt_entries && (rc = grow_table(vd, s, index)) != RT_OK)
        return rc;
    struct qcow2_rblock *b;
    if ((rc = block_get(vd, s, index, true, &b)) != RT_OK)
        return rc;
    b = &s->rblocks[index]; /* block_get may have grown the table */
    uint64_t value = entry_get(b->data, s->refcount_order, cluster % s->rb_entries);
    if (delta < 0 && value < (uint64_t)-delta)
        return RT_ERR_VD_CORRUPT; /* dropping a reference the count never had */
    if (delta > 0 && s->refcount_max - value < (uint64_t)delta)
        return RT_ERR_OUT_OF_RANGE; /* the refcount width cannot count that high */
    entry_set(b->data, s->refcount_order, cluster % s->rb_entries, value + (uint64_t)delta);
    b->dirty = true;
    return RT_OK;
}

int rt__qcow2_alloc_clusters(rt_vd_t vd, uint32_t count, uint64_t *host_off)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t host = s->next_free;
    s->next_free += (uint64_t)count * s->cluster_size;
    for (uint32_t i = 0; i < count; i++) {
        int rc = rt__qcow2_refcount_add(vd, (host >> s->cluster_bits) + i, 1);
        if (rc != RT_OK)
            return rc;
    }
    *host_off = host;
    return RT_OK;
}

int rt__qcow2_header_write(rt_vd_t vd)
{
    struct qcow2 *s = qcow2_of(vd);
    uint8_t *h = s->header;
    vd_put_be64(h + QH_RT_OFFSET, s->rt_offset);
    vd_put_be32(h + QH_RT_CLUSTERS, s->rt_clusters);
    if (s->version == 3) {
        vd_put_be64(h + QH_INCOMPATIBLE, s->incompatible);
        vd_put_be64(h + QH_AUTOCLEAR, s->autoclear);
    }
    int rc = rt__vd_meta_write(vd, 0, h, s->header_bytes);
    if (rc == RT_OK)
        s->header_dirty = false;
    return rc;
}

int rt__qcow2_refcount_flush(rt_vd_t vd)
{
    struct qcow2 *s = qcow2_of(vd);
    int rc = RT_OK;
    for (uint64_t i = 0; rc == RT_OK && i < s->rt_entries; i++) {
        struct qcow2_rblock *b = &s->rblocks[i];
        if (b->data != NULL && b->dirty) {
            rc = rt__vd_meta_write(vd, s->rt[i], b->data, s->cluster_size);
            if (rc == RT_OK)
                b->dirty = false;
        }
    }
    if (rc == RT_OK && s->rt_dirty) {
        size_t bytes = (size_t)s->rt_clusters * s->cluster_size;
        uint8_t *raw = calloc(1, bytes);
        if (raw == NULL)
            return RT_ERR_NO_MEMORY;
        for (uint64_t i = 0; i < s->rt_entries; i++)
            vd_put_be64(raw + 8u * i, s->rt[i]);
        rc = rt__vd_meta_write(vd, s->rt_offset, raw, bytes);
        free(raw);
        if (rc == RT_OK)
            s->rt_dirty = false;
    }
    /* The header points at a moved table only once the table is written. */
    if (rc == RT_OK && s->header_dirty) {
        rc = rt_file_flush(vd->file);
        if (rc == RT_OK)
            rc = rt__qcow2_header_write(vd);
    }
    return rc;
}
