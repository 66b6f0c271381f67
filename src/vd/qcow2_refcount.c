/*
 * QCOW2 refcounts and the cluster allocator.
 *
 * Clusters are handed out upwards from a mark that starts at the end of the file and
 * never moves down: a freed cluster is never reused while the image is open, so a
 * cluster that the file still references from an older, committed table can never be
 * handed out again before the commit that drops the reference is durable.
 *
 * The end of the file is only where the search starts.  A cluster is handed out only
 * when it is outside the metadata index and its refcount is zero: a crash can leave
 * refcounts on clusters past the end of the file (the refcount blocks were committed,
 * the data that extended the file was not), and a table may end past it; handing such a
 * cluster out would count it twice or write data over the table.  Refcount blocks and
 * table growth come from the same search.  The in-memory refcounts are always at least
 * the number of references the file holds, so writing them at any moment is safe.
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

void rt__qcow2_entry_set(uint8_t *block, uint32_t order, uint64_t index, uint64_t value)
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

/* The refcount of @a cluster as the blocks in memory or in the file say; 0 where no
 * block covers it. */
static int refcount_of(rt_vd_t vd, struct qcow2 *s, uint64_t cluster, uint64_t *refcount);

/* Finds @a count contiguous clusters at or above the allocator's mark that are free
 * (outside the metadata index, refcount 0), moves the mark past them and returns the
 * first one's offset.  Their refcounts are the caller's to raise.  Every cluster looked
 * at is left behind for good, so the work over the life of an open image is bounded by
 * the clusters the refcount blocks can count. */
/* The file is grown ahead of the allocator, 64 MiB at a time: a data write into new
 * clusters then lands inside the file, where file systems let O_DIRECT writes run
 * side by side, instead of past its end, where they take turns (3x the IOPS of
 * allocating 4 KiB writes here).  The space is a hole: it costs nothing, reads as
 * zeros, and close cuts the file back to the last cluster handed out. */
#define GROW_AHEAD (64ull << 20)

static void grow_ahead(rt_vd_t vd, struct qcow2 *s)
{
    if (vd->read_only || s->next_free <= s->file_grown)
        return;
    uint64_t target = s->next_free + GROW_AHEAD;
    /* A failure is not this allocation's: the writes into the space report it. */
    if (rt_file_set_size(vd->file, target) == RT_OK)
        s->file_grown = target;
    else
        s->file_grown = s->next_free;
}

void rt__qcow2_trim_file(rt_vd_t vd)
{
    struct qcow2 *s = qcow2_of(vd);
    if (vd->read_only || s->file_grown <= s->file_size_at_open)
        return;
    /* Back to the last cluster in use: one handed out and then given back (its data
     * write failed) was never written, and the file ends as if it had not been. */
    uint64_t opened_end = (s->file_size_at_open + s->cluster_size - 1) &
                          ~(uint64_t)(s->cluster_size - 1); /* where handing out began */
    uint64_t end = s->next_free;
    while (end > opened_end) {
        uint64_t refcount = 1;
        uint64_t cluster = (end >> s->cluster_bits) - 1;
        if (rt__qcow2_is_metadata(s, cluster) ||
            refcount_of(vd, s, cluster, &refcount) != RT_OK || refcount != 0)
            break;
        end -= s->cluster_size;
    }
    if (end <= opened_end)
        end = s->file_size_at_open; /* nothing handed out is in use: as it was */
    rt_file_set_size(vd->file, end); /* nothing at or past end is referenced */
}

static int claim_run(rt_vd_t vd, struct qcow2 *s, uint64_t count, uint64_t *host)
{
    /* Host offsets are 56 bits (bits 9..55 of an entry). */
    uint64_t max_cluster = (QCOW2_OFFSET_MASK | 511u) >> s->cluster_bits;
    uint64_t start = s->next_free >> s->cluster_bits;
    uint64_t found = 0;
    while (found < count) {
        uint64_t cluster = start + found;
        if (cluster > max_cluster)
            return RT_ERR_FILE_TOO_BIG;
        uint64_t refcount = 0;
        int rc = rt__qcow2_is_metadata(s, cluster) ? RT_OK : refcount_of(vd, s, cluster, &refcount);
        if (rc != RT_OK)
            return rc;
        if (refcount != 0 || rt__qcow2_is_metadata(s, cluster)) {
            start = cluster + 1;
            found = 0;
            continue;
        }
        found++;
    }
    s->next_free = (start + count) << s->cluster_bits;
    *host = start << s->cluster_bits;
    grow_ahead(vd, s);
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
    /* Where the new table goes is chosen while the old one still describes the file;
     * nothing has changed if that fails. */
    uint64_t host;
    int rc = claim_run(vd, s, clusters, &host);
    if (rc == RT_OK)
        rc = rt__qcow2_note_metadata(s, host, clusters);
    for (uint64_t c = 0; rc == RT_OK && c < s->rt_clusters; c++)
        rc = rt__qcow2_decrement_after(s, (s->rt_offset >> s->cluster_bits) + c, 0);
    if (rc != RT_OK)
        return rc;
    s->rt_entries = entries;
    s->rt_offset = host;
    s->rt_clusters = (uint32_t)clusters;
    s->rt_dirty = true;
    s->header_dirty = true;
    for (uint64_t c = 0; rc == RT_OK && c < clusters; c++)
        rc = rt__qcow2_refcount_add(vd, (s->rt_offset >> s->cluster_bits) + c, 1);
    return rc;
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
    uint64_t host;
    int rc = claim_run(vd, s, 1, &host);
    if (rc == RT_OK)
        rc = rt__qcow2_note_metadata(s, host, 1);
    if (rc != RT_OK) {
        free(data);
        return rc;
    }
    s->rt[index] = host;
    s->rt_dirty = true;
    s->rblocks[index].data = data;
    s->rblocks[index].dirty = true;
    rc = rt__qcow2_refcount_add(vd, host >> s->cluster_bits, 1);
    *out = &s->rblocks[index];
    return rc;
}

int rt__qcow2_refcount_get(rt_vd_t vd, uint64_t cluster, uint64_t *refcount)
{
    return refcount_of(vd, qcow2_of(vd), cluster, refcount);
}

static int refcount_of(rt_vd_t vd, struct qcow2 *s, uint64_t cluster, uint64_t *refcount)
{
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

/* Raises (@a up) or lowers the count of @a cluster by @a amount, within the width. */
static int refcount_change(rt_vd_t vd, uint64_t cluster, bool up, uint64_t amount)
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
    if (!up && value < amount)
        return RT_ERR_VD_CORRUPT; /* dropping a reference the count never had */
    if (up && s->refcount_max - value < amount)
        return RT_ERR_OUT_OF_RANGE; /* the refcount width cannot count that high */
    rt__qcow2_entry_set(b->data, s->refcount_order, cluster % s->rb_entries,
                        up ? value + amount : value - amount);
    b->dirty = true;
    return RT_OK;
}

int rt__qcow2_refcount_add(rt_vd_t vd, uint64_t cluster, int64_t delta)
{
    /* The magnitude in unsigned arithmetic: -INT64_MIN does not exist as an int64_t. */
    return delta < 0 ? refcount_change(vd, cluster, false, 0 - (uint64_t)delta)
                     : refcount_change(vd, cluster, true, (uint64_t)delta);
}

int rt__qcow2_refcount_drop(rt_vd_t vd, uint64_t cluster, uint64_t amount)
{
    return refcount_change(vd, cluster, false, amount);
}

int rt__qcow2_alloc_clusters(rt_vd_t vd, uint32_t count, bool metadata, uint64_t *host_off)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t host = 0;
    int rc = claim_run(vd, s, count, &host);
    if (rc == RT_OK && metadata)
        rc = rt__qcow2_note_metadata(s, host, count);
    if (rc != RT_OK)
        return rc;
    uint64_t first = host >> s->cluster_bits;
    for (uint32_t i = 0; i < count; i++) {
        if ((rc = rt__qcow2_refcount_add(vd, first + i, 1)) == RT_OK)
            continue;
        /* Counting cluster i failed (no refcount block could be made for it): the
         * caller gets nothing, so nothing may stay counted for it.  The blocks of the
         * clusters before it are loaded, so dropping them cannot fail; a metadata note
         * stays, which only keeps the allocator off those clusters. */
        while (i-- > 0)
            (void)rt__qcow2_refcount_add(vd, first + i, -1);
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

struct qcow2_header_switch rt__qcow2_header_now(const struct qcow2 *s)
{
    return (struct qcow2_header_switch){s->nb_snapshots, s->snapshots_offset, s->size, s->l1_size,
                                        s->l1_offset};
}

int rt__qcow2_header_switch(rt_vd_t vd, const struct qcow2_header_switch *to)
{
    struct qcow2 *s = qcow2_of(vd);
    uint8_t *h = s->header;
    uint8_t keep[QH_V2_LENGTH];
    memcpy(keep, h, sizeof(keep));
    vd_put_be32(h + QH_NB_SNAPSHOTS, to->nb_snapshots);
    vd_put_be64(h + QH_SNAPSHOTS_OFFSET, to->snapshots_offset);
    vd_put_be64(h + QH_SIZE, to->size);
    vd_put_be32(h + QH_L1_SIZE, to->l1_size);
    vd_put_be64(h + QH_L1_OFFSET, to->l1_offset);
    int rc = rt__qcow2_header_write(vd);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc != RT_OK)
        memcpy(h, keep, sizeof(keep)); /* the file may have either; memory keeps the old */
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
        rc = rt__vd_meta_flush(vd);
        if (rc == RT_OK)
            rc = rt__qcow2_header_write(vd);
    }
    return rc;
}
