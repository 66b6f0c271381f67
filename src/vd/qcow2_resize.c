/*
 * QCOW2 resize: the header's size, and a larger L1 table when the new size needs more
 * entries than the table has.
 *
 * A larger table is written to new clusters, never over the old one, in the order the
 * driver's commit keeps (qcow2.h): the new clusters' refcounts, then the table, then
 * the header that points at it (size, L1 size and offset in one sector, one write),
 * and only then is the old table's space given back.  A crash before the header write
 * leaves the old image and leaked clusters; after it, the new one.
 *
 * A shrink keeps the L1 table as it is (larger than the size needs is valid, and the
 * layer has already discarded the clusters past the new end); the L2 tables past it
 * stay allocated and empty, as a later grow would need them again.
 */
#include "config.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vd/qcow2.h"

/* Room in memory for @a entries L1 entries: the table and the per-entry arrays grow
 * before anything is written, so a failure here changes nothing. */
static int grow_arrays(struct qcow2 *s, uint32_t entries)
{
    uint64_t *l1 = realloc(s->l1, (size_t)entries * sizeof(*l1));
    if (l1 == NULL)
        return RT_ERR_NO_MEMORY;
    s->l1 = l1;
    struct qcow2_l2 **l2 = realloc(s->l2, (size_t)entries * sizeof(*l2));
    if (l2 == NULL)
        return RT_ERR_NO_MEMORY;
    s->l2 = l2;
    uint8_t *rewritten = realloc(s->l2_rewritten, entries);
    if (rewritten == NULL)
        return RT_ERR_NO_MEMORY;
    s->l2_rewritten = rewritten;
    uint32_t old = s->l1_size;
    memset(s->l1 + old, 0, (size_t)(entries - old) * sizeof(*s->l1));
    memset(s->l2 + old, 0, (size_t)(entries - old) * sizeof(*s->l2));
    memset(s->l2_rewritten + old, 0, entries - old);
    return RT_OK;
}

/* Writes a table of @a entries entries (the current ones, then empty ones) to new
 * clusters; *@a host receives where. */
static int write_new_l1(rt_vd_t vd, struct qcow2 *s, uint32_t entries, uint64_t *host)
{
    uint64_t bytes = (uint64_t)entries * 8u;
    uint32_t clusters = (uint32_t)((bytes + s->cluster_size - 1) >> s->cluster_bits);
    uint8_t *raw = calloc(clusters, s->cluster_size);
    if (raw == NULL)
        return RT_ERR_NO_MEMORY;
    for (uint32_t i = 0; i < s->l1_size; i++)
        vd_put_be64(raw + 8u * i, s->l1[i]);
    int rc = rt__qcow2_alloc_clusters(vd, clusters, true, host);
    if (rc == RT_OK)
        rc = rt__vd_meta_write(vd, *host, raw, (size_t)clusters << s->cluster_bits);
    free(raw);
    /* The clusters' counts before the header can name them. */
    if (rc == RT_OK)
        rc = rt__qcow2_refcount_flush(vd);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    return rc;
}

/* Queues the old table's clusters to be given back at the next commit. */
static int drop_old_l1(struct qcow2 *s, uint64_t offset, uint32_t entries)
{
    uint64_t bytes = (uint64_t)entries * 8u;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t clusters = (bytes + s->cluster_size - 1) >> s->cluster_bits;
    int rc = RT_OK;
    for (uint64_t i = 0; rc == RT_OK && i < clusters; i++)
        rc = rt__qcow2_decrement_after(s, first + i, 0);
    return rc;
}

int rt__qcow2_resize(rt_vd_t vd, uint64_t size, rt_vd_error_t *err)
{
    struct qcow2 *s = qcow2_of(vd);
    if (size % 512u != 0)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "the new size must be a multiple of 512 (QCOW2 counts sectors)");
    if (s->nb_snapshots > 0 && s->version < 3)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "a version 2 QCOW2 image with internal snapshots cannot be resized "
                           "(it does not record each snapshot's size)");
    uint64_t l1_span = (uint64_t)s->cluster_size << s->l2_bits;
    uint64_t needed = size / l1_span + (size % l1_span != 0);
    if (size > (1ull << 61) || needed * 8u > QCOW2_MAX_L1_BYTES)
        return rt__vd_fail(err, RT_ERR_OUT_OF_RANGE,
                           "%" PRIu64 " bytes is more than a QCOW2 image of %u-byte clusters "
                           "can describe",
                           size, s->cluster_size);

    uint64_t old_l1_offset = s->l1_offset;
    uint32_t old_l1_size = s->l1_size;
    struct qcow2_header_switch to = rt__qcow2_header_now(s);
    to.size = size;
    int rc = RT_OK;
    if (needed > s->l1_size) {
        if ((rc = grow_arrays(s, (uint32_t)needed)) != RT_OK ||
            (rc = write_new_l1(vd, s, (uint32_t)needed, &to.l1_offset)) != RT_OK)
            return rt__vd_fail(err, rc, "cannot write a larger L1 table");
        to.l1_size = (uint32_t)needed;
    }
    /* On failure the new table's clusters stay counted: a leak at worst. */
    if ((rc = rt__qcow2_header_switch(vd, &to)) != RT_OK)
        return rt__vd_fail(err, rc, "cannot write the QCOW2 header");
    s->size = size;
    if (needed > old_l1_size) {
        s->l1_offset = to.l1_offset;
        s->l1_size = (uint32_t)needed;
        /* Out of memory for the note only leaks the old table's space. */
        if (old_l1_size > 0)
            (void)drop_old_l1(s, old_l1_offset, old_l1_size);
    }
    return RT_OK;
}
