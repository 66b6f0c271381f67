/*
 * QCOW2 writes: cluster allocation, copy-on-write of shared L2 tables and clusters,
 * compressed clusters, and the commit that puts it all into the file in a safe order.
 *
 * alloc() changes only memory: a new data cluster (refcount 1), the L2 entry pointing
 * at it, and when needed a new L2 table (a copy, if the old one was shared with a
 * snapshot, whose clusters each gain a reference).  References dropped by the change
 * (the old shared cluster, a compressed cluster's host clusters, a replaced table) are
 * queued as decrements, to be applied only once the new pointers are durable.
 *
 * commit(upto), between the layer's two fsyncs, writes in this order, with an fsync
 * after each step:
 *
 *   1. refcount blocks, refcount table, header   every new cluster is counted
 *   2. L2 tables                                 with the entries of committable
 *                                                allocations; others keep their old value
 *   3. L1 table                                  pointing at the tables of step 2
 *   4. refcount decrements                       the dropped references
 *
 * A crash after any step leaves references that are all counted (leaks at worst).
 */
#include "config.h"

#include <rt/mem.h>

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "vd/qcow2.h"

/* The pending list is in allocation order and its ids increase (modulo 2^32: it never
 * spans that many), so an allocation's entry is found by binary search on the distance
 * of its id from the first one.  Removals keep the order. */
static struct qcow2_pending *find_pending(struct qcow2 *s, uint32_t id)
{
    if (s->pending_len == 0)
        return NULL;
    uint32_t first = s->pending[0].id, want = id - first;
    size_t lo = 0, hi = s->pending_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->pending[mid].id - first < want)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->pending_len && s->pending[lo].id == id ? &s->pending[lo] : NULL;
}

static int push_pending(struct qcow2 *s, struct qcow2_pending p)
{
    struct qcow2_pending *grown =
        rt__vd_grow(s->pending, &s->pending_cap, s->pending_len, sizeof(*grown), 64);
    if (grown == NULL)
        return RT_ERR_NO_MEMORY;
    s->pending = grown;
    s->pending[s->pending_len++] = p;
    return RT_OK;
}

int rt__qcow2_for_each_referenced(const struct qcow2 *s, uint64_t entry,
                                  int (*fn)(void *ctx, uint64_t cluster), void *ctx)
{
    if (entry & QCOW2_COMPRESSED) {
        uint64_t host, bytes;
        rt__qcow2_compressed_span(s, entry, &host, &bytes);
        uint64_t first = host >> s->cluster_bits;
        uint64_t last = (host + bytes - 1) >> s->cluster_bits;
        for (uint64_t c = first; c <= last; c++) {
            int rc = fn(ctx, c);
            if (rc != RT_OK)
                return rc;
        }
        return RT_OK;
    }
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    return host != 0 ? fn(ctx, host >> s->cluster_bits) : RT_OK;
}

struct ref_ctx {
    rt_vd_t vd;
    uint32_t id;
};

static int drop_later(void *ctx, uint64_t cluster)
{
    struct ref_ctx *r = ctx;
    return rt__qcow2_decrement_after(qcow2_of(r->vd), cluster, r->id);
}

/* The L2 table of @a l1_index, writable: its own (COPIED) table, made or copied now. */
static int writable_l2(rt_vd_t vd, struct qcow2 *s, uint32_t l1_index, struct qcow2_l2 **out)
{
    int rc;
    struct qcow2_l2 *old = rt__qcow2_l2_get(vd, l1_index, &rc);
    if (rc != RT_OK)
        return rc;
    if (old != NULL && (s->l1[l1_index] & QCOW2_COPIED)) {
        *out = old;
        return RT_OK;
    }
    if (old == NULL)
        rt__qcow2_trim_cache(s, l1_index, 1);
    struct qcow2_l2 *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->entries = calloc(1, s->cluster_size)) == NULL) {
        free(t);
        return RT_ERR_NO_MEMORY;
    }
    uint64_t host;
    if ((rc = rt__qcow2_alloc_clusters(vd, 1, true, &host)) != RT_OK)
        goto fail;
    if (old != NULL) {
        /* Shared with a snapshot.  A cluster's refcount counts the L1 tables that reach
         * it (QEMU's rule), not the L2 tables: the copy takes over the active L1's
         * reference, so the clusters' counts stay and only the tables' change.  The
         * entries stay shared (their clusters are still reached twice). */
        for (uint32_t i = 0; i < s->l2_entries; i++)
            t->entries[i] = old->entries[i] & ~QCOW2_COPIED;
        if ((rc = rt__qcow2_decrement_after(s, old->host_off >> s->cluster_bits, 0)) != RT_OK)
            goto fail;
        free(old->entries);
        free(old);
    } else {
        s->l2_loaded++;
    }
    t->host_off = host;
    t->dirty = true;
    s->l2[l1_index] = t;
    s->l1[l1_index] = host | QCOW2_COPIED;
    s->l1_dirty = true;
    *out = t;
    return RT_OK;

fail:
    free(t->entries);
    free(t);
    return rc;
}

/* Points guest cluster @a cluster at @a new_entry in memory, remembering what to undo
 * or drop; @a seq is 0 while the data is still being written. */
static int repoint(rt_vd_t vd, uint64_t cluster, uint64_t new_entry, uint64_t seq, uint32_t *id)
{
    struct qcow2 *s = qcow2_of(vd);
    uint32_t l1_index = (uint32_t)(cluster >> s->l2_bits);
    uint32_t l2_index = (uint32_t)(cluster & (s->l2_entries - 1));
    struct qcow2_l2 *t = NULL;
    int rc = writable_l2(vd, s, l1_index, &t);
    if (rc != RT_OK)
        return rc;
    uint64_t old = t->entries[l2_index];
    *id = ++s->next_id;
    if (*id == 0)
        *id = ++s->next_id;
    /* A cluster zeroed in place (its entry gains ZERO, the same host cluster) keeps the
     * reference; every other change drops what the old entry referenced. */
    bool same_cluster = !((old | new_entry) & QCOW2_COMPRESSED) && (old & QCOW2_OFFSET_MASK) != 0 &&
                        (old & QCOW2_OFFSET_MASK) == (new_entry & QCOW2_OFFSET_MASK);
    struct ref_ctx ctx = {vd, *id};
    if (!same_cluster && (rc = rt__qcow2_for_each_referenced(s, old, drop_later, &ctx)) != RT_OK)
        return rc;
    rc = push_pending(s, (struct qcow2_pending){*id, l1_index, l2_index, old, new_entry, seq});
    if (rc != RT_OK)
        return rc;
    t->entries[l2_index] = new_entry;
    t->pending++;
    return RT_OK;
}

int rt__qcow2_alloc(rt_vd_t vd, uint64_t off, struct vd_alloc *alloc)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t cluster = off >> s->cluster_bits;
    uint64_t host;
    int rc = rt__qcow2_alloc_clusters(vd, 1, false, &host);
    if (rc != RT_OK)
        return rc;
    uint32_t id;
    if ((rc = repoint(vd, cluster, host | QCOW2_COPIED, 0, &id)) != RT_OK) {
        rt__qcow2_refcount_add(vd, host >> s->cluster_bits, -1);
        return rc;
    }
    alloc->virt_off = cluster << s->cluster_bits;
    alloc->host_off = host;
    alloc->size = s->cluster_size;
    alloc->index = id;
    /* The allocator hands out clusters upwards from the file's rounded-up end at open
     * and never twice: what has not been written there reads as zeros. */
    alloc->fresh = host >= s->file_size_at_open;
    return RT_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Zeros and discards. */

/* What the L2 entry @a old becomes when its cluster is zeroed or discarded (@a how);
 * false when this image cannot record it (QCOW2 v2 has no zero flag: only dropping the
 * cluster reads as zeros, and only without a backing file). */
static bool zeroed_entry(const struct qcow2 *s, bool backing, uint32_t how, uint64_t old,
                         uint64_t *out)
{
    bool unmap = (how & (VD_ZERO_DISCARD | RT_VD_ZERO_MAY_UNMAP)) != 0;
    if (!backing && unmap) {
        *out = 0; /* unallocated: zeros, as there is nothing under it */
        return true;
    }
    if (s->version < 3)
        return false;
    uint64_t host = old & QCOW2_OFFSET_MASK;
    if (!unmap && !(old & QCOW2_COMPRESSED) && host != 0 && (old & QCOW2_COPIED)) {
        *out = host | QCOW2_COPIED | QCOW2_ZERO; /* stays allocated, as asked */
        return true;
    }
    /* A compressed or shared cluster cannot be kept for this entry alone: dropped. */
    *out = QCOW2_ZERO;
    return true;
}

int rt__qcow2_zero(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t how, uint64_t seq,
                   struct vd_zero *z)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t in_cluster = off & (s->cluster_size - 1);
    z->done = false;
    if (in_cluster != 0) {
        z->length = len < s->cluster_size - in_cluster ? len : s->cluster_size - in_cluster;
        return RT_OK; /* part of a cluster: the engine's */
    }
    /* Whole clusters, the disk's last one included when the range runs to the end. */
    uint64_t whole = len >> s->cluster_bits;
    if (off + len == vd->size && (len & (s->cluster_size - 1)) != 0)
        whole++;
    if (whole == 0) {
        z->length = len;
        return RT_OK;
    }
    uint64_t cluster = off >> s->cluster_bits;
    uint32_t l1_index = (uint32_t)(cluster >> s->l2_bits);
    uint32_t l2_index = (uint32_t)(cluster & (s->l2_entries - 1));
    uint64_t n = whole < s->l2_entries - l2_index ? whole : s->l2_entries - l2_index;
    z->length = n << s->cluster_bits < len ? n << s->cluster_bits : len;
    bool backing = vd->backing_name != NULL;
    uint64_t entry;
    if (!zeroed_entry(s, backing, how, 0, &entry))
        return RT_OK; /* nothing here can: the engine writes zeros */
    int rc;
    struct qcow2_l2 *t = rt__qcow2_l2_get(vd, l1_index, &rc);
    if (rc != RT_OK)
        return rc;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t old = t != NULL ? t->entries[l2_index + i] : 0;
        zeroed_entry(s, backing, how, old, &entry);
        /* Nothing to change: the same entry, or no data either way and nothing beneath. */
        bool no_data = (old & QCOW2_OFFSET_MASK) == 0 && !(old & QCOW2_COMPRESSED) &&
                       (entry & QCOW2_OFFSET_MASK) == 0;
        if (entry == old || (!backing && no_data))
            continue;
        uint32_t id;
        if ((rc = repoint(vd, cluster + i, entry, seq, &id)) != RT_OK)
            return rc;
        t = s->l2[l1_index]; /* the writable table (a copy, if it was shared) */
    }
    z->done = true;
    return RT_OK;
}

static void forget_decrements(struct qcow2 *s, uint32_t id)
{
    for (size_t i = 0; i < s->decrements_len;)
        if (s->decrements[i].after_id == id)
            s->decrements[i] = s->decrements[--s->decrements_len];
        else
            i++;
}

void rt__qcow2_alloc_done(rt_vd_t vd, const struct vd_alloc *alloc, int status, uint64_t seq)
{
    struct qcow2 *s = qcow2_of(vd);
    struct qcow2_pending *p = find_pending(s, alloc->index);
    if (p == NULL)
        return;
    if (status == RT_OK) {
        p->seq = seq;
        return;
    }
    /* The data never made it: the entry goes back, the new cluster (which nothing in the
     * file references) is freed, and the old reference stays. */
    struct qcow2_l2 *t = s->l2[p->l1_index];
    t->entries[p->l2_index] = p->old_entry;
    t->pending--;
    rt__qcow2_refcount_add(vd, alloc->host_off >> s->cluster_bits, -1);
    forget_decrements(s, p->id);
    size_t i = (size_t)(p - s->pending);
    memmove(p, p + 1, (s->pending_len - i - 1) * sizeof(*p));
    s->pending_len--;
}

/* ---------------------------------------------------------------------------------- */
/* Commit. */

static bool committable(const struct qcow2_pending *p, uint64_t upto)
{
    return p->seq != 0 && p->seq <= upto;
}

static int by_table(const void *a, const void *b)
{
    const struct qcow2_pending *x = *(const struct qcow2_pending *const *)a;
    const struct qcow2_pending *y = *(const struct qcow2_pending *const *)b;
    return x->l1_index < y->l1_index ? -1 : x->l1_index > y->l1_index;
}

static int write_l2_tables(rt_vd_t vd, struct qcow2 *s, uint64_t upto)
{
    /* Which tables to write: dirty ones, and those with committable entries.  The
     * allocations not yet committable, by table, to keep their old entries. */
    uint8_t *want = calloc(s->l1_size ? s->l1_size : 1, 1);
    size_t held_room = s->pending_len ? s->pending_len : 1;
    const struct qcow2_pending **held = malloc(held_room * sizeof(*held));
    uint8_t *raw = malloc(s->cluster_size);
    int rc = want != NULL && held != NULL && raw != NULL ? RT_OK : RT_ERR_NO_MEMORY;
    size_t nheld = 0, next_held = 0;
    for (uint32_t i = 0; rc == RT_OK && i < s->l1_size; i++)
        want[i] = s->l2[i] != NULL && s->l2[i]->dirty;
    for (size_t i = 0; rc == RT_OK && i < s->pending_len; i++) {
        if (committable(&s->pending[i], upto))
            want[s->pending[i].l1_index] = 1;
        else
            held[nheld++] = &s->pending[i];
    }
    if (rc == RT_OK)
        qsort(held, nheld, sizeof(*held), by_table);
    for (uint32_t i = 0; rc == RT_OK && i < s->l1_size; i++) {
        while (next_held < nheld && held[next_held]->l1_index < i)
            next_held++;
        if (!want[i])
            continue;
        struct qcow2_l2 *t = s->l2[i];
        for (uint32_t j = 0; j < s->l2_entries; j++)
            vd_put_be64(raw + 8u * j, t->entries[j]);
        /* Allocations whose data is not yet durable keep their old entry in the file. */
        for (size_t k = next_held; k < nheld && held[k]->l1_index == i; k++)
            vd_put_be64(raw + 8u * held[k]->l2_index, held[k]->old_entry);
        s->l2_writes++; /* a load asked before this may read either version */
        rc = rt__vd_meta_write(vd, t->host_off, raw, s->cluster_size);
        if (rc == RT_OK) {
            t->dirty = false;
            s->l2_rewritten[i] = 1; /* read back, its entries may name new clusters */
        }
    }
    free(raw);
    free((void *)held);
    free(want);
    return rc;
}

static int write_l1(rt_vd_t vd, struct qcow2 *s)
{
    if (!s->l1_dirty)
        return RT_OK;
    size_t bytes = (size_t)s->l1_size * 8u;
    uint8_t *raw = malloc(bytes ? bytes : 1);
    if (raw == NULL)
        return RT_ERR_NO_MEMORY;
    for (uint32_t i = 0; i < s->l1_size; i++)
        vd_put_be64(raw + 8u * i, s->l1[i]);
    int rc = rt__vd_meta_write(vd, s->l1_offset, raw, bytes);
    free(raw);
    if (rc == RT_OK)
        s->l1_dirty = false;
    return rc;
}

static int by_cluster(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Gives the file system back the space of clusters nothing references any more (a
 * discard's, a zeroed cluster's, a replaced table's), in runs.  Only space: a failure
 * changes nothing, and the allocator never hands these clusters out again while open. */
static void punch_freed(rt_vd_t vd, struct qcow2 *s, uint64_t *freed, size_t n)
{
    qsort(freed, n, sizeof(*freed), by_cluster);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && freed[j] == freed[j - 1] + 1)
            j++;
        if (rt__vd_punch(vd, freed[i] << s->cluster_bits,
                         (uint64_t)(j - i) << s->cluster_bits) == RT_ERR_NOT_SUPPORTED)
            return;
        i = j;
    }
}

/* Step 4: the decrements whose pointers are now gone from the file. */
static int apply_decrements(rt_vd_t vd, struct qcow2 *s, uint64_t upto)
{
    int rc = RT_OK;
    uint64_t *freed = malloc((s->decrements_len ? s->decrements_len : 1) * sizeof(*freed));
    size_t nfreed = 0;
    for (size_t i = 0; rc == RT_OK && i < s->decrements_len;) {
        struct qcow2_decrement *d = &s->decrements[i];
        const struct qcow2_pending *p = d->after_id == 0 ? NULL : find_pending(s, d->after_id);
        bool ready = d->after_id == 0 || (p != NULL && committable(p, upto));
        if (!ready) {
            i++;
            continue;
        }
        uint64_t left = 1;
        rc = rt__qcow2_refcount_add(vd, d->cluster, -1);
        if (rc == RT_OK && freed != NULL && rt__qcow2_refcount_get(vd, d->cluster, &left) == RT_OK &&
            left == 0)
            freed[nfreed++] = d->cluster;
        *d = s->decrements[--s->decrements_len];
    }
    if (rc == RT_OK && nfreed > 0)
        punch_freed(vd, s, freed, nfreed);
    free(freed);
    return rc;
}

static bool anything_to_commit(const struct qcow2 *s, uint64_t upto)
{
    if (s->l1_dirty || s->rt_dirty || s->header_dirty)
        return true;
    for (size_t i = 0; i < s->pending_len; i++)
        if (committable(&s->pending[i], upto))
            return true;
    for (size_t i = 0; i < s->decrements_len; i++)
        if (s->decrements[i].after_id == 0)
            return true;
    for (uint64_t i = 0; i < s->rt_entries; i++)
        if (s->rblocks[i].dirty)
            return true;
    for (uint32_t i = 0; i < s->l1_size; i++)
        if (s->l2[i] != NULL && s->l2[i]->dirty)
            return true;
    return false;
}

int rt__qcow2_commit(rt_vd_t vd, uint64_t upto)
{
    struct qcow2 *s = qcow2_of(vd);
    if (!anything_to_commit(s, upto))
        return 0;
    int rc = rt__qcow2_refcount_flush(vd);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc == RT_OK)
        rc = write_l2_tables(vd, s, upto);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc == RT_OK)
        rc = write_l1(vd, s);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc == RT_OK)
        rc = apply_decrements(vd, s, upto);
    if (rc == RT_OK)
        rc = rt__qcow2_refcount_flush(vd);
    if (rc != RT_OK)
        return rc;
    /* What is in the file now is no longer pending (the rest keeps its order). */
    size_t kept = 0;
    for (size_t i = 0; i < s->pending_len; i++) {
        if (committable(&s->pending[i], upto))
            s->l2[s->pending[i].l1_index]->pending--;
        else
            s->pending[kept++] = s->pending[i];
    }
    s->pending_len = kept;
    rt__qcow2_trim_cache(s, UINT32_MAX, 0); /* what the commit made clean may go */
    return 1;
}

/* ---------------------------------------------------------------------------------- */
/* Compressed clusters. */

/* Deflates @a in (one cluster) raw, as QEMU does; 0 bytes when it does not shrink. */
static size_t deflate_cluster(const uint8_t *in, uint32_t len, uint8_t *out)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    z.next_in = (Bytef *)in;
    z.avail_in = len;
    z.next_out = out;
    z.avail_out = len - 1;
    int zrc = deflate(&z, Z_FINISH);
    size_t produced = len - 1 - z.avail_out;
    deflateEnd(&z);
    return zrc == Z_STREAM_END ? produced : 0;
}

/* Drops the references on the *@a count clusters from *@a first; clears the run. */
static int give_back(rt_vd_t vd, uint64_t *first, uint64_t *count)
{
    int rc = RT_OK;
    for (uint64_t c = 0; c < *count; c++) {
        int dropped = rt__qcow2_refcount_add(vd, *first + c, -1);
        if (rc == RT_OK)
            rc = dropped;
    }
    *count = 0;
    return rc;
}

int rt__qcow2_write_compressed(rt_vd_t vd, uint64_t off, const void *buf)
{
    struct qcow2 *s = qcow2_of(vd);
    uint8_t *packed = malloc(s->cluster_size);
    if (packed == NULL)
        return RT_ERR_NO_MEMORY;
    size_t bytes = deflate_cluster(buf, s->cluster_size, packed);
    if (bytes == 0) {
        free(packed);
        return 1; /* incompressible: the caller writes it plainly */
    }
    /* Compressed data is packed byte after byte: it continues in the last cluster
     * handed out when that is still the newest and its count can take one more (never,
     * with 1-bit refcounts), spilling into the clusters right after it if they are
     * free; otherwise it starts a fresh run. */
    uint64_t start = s->compressed_cursor;
    uint64_t cluster_end = (start | (s->cluster_size - 1)) + 1;
    bool continues = start != 0 && start % s->cluster_size != 0 && cluster_end == s->next_free;
    uint64_t held = 0, held_first = 0; /* new clusters this write holds, to give back */
    bool shares = false;               /* it holds one more reference on start's cluster */
    int rc = RT_OK;
    if (continues) {
        uint64_t refs;
        if ((rc = rt__qcow2_refcount_get(vd, start >> s->cluster_bits, &refs)) != RT_OK)
            goto fail;
        continues = refs < s->refcount_max;
    }
    if (continues && start + bytes > cluster_end) {
        uint64_t more = (start + bytes - cluster_end + s->cluster_size - 1) >> s->cluster_bits;
        uint64_t next;
        if ((rc = rt__qcow2_alloc_clusters(vd, (uint32_t)more, false, &next)) != RT_OK)
            goto fail;
        held_first = next >> s->cluster_bits;
        held = more;
        /* The allocator skipped a cluster in use: give the run back (it stays unused,
         * refcount 0) and start afresh. */
        continues = next == cluster_end;
        if (!continues && (rc = give_back(vd, &held_first, &held)) != RT_OK)
            goto fail;
    }
    if (continues) {
        if ((rc = rt__qcow2_refcount_add(vd, start >> s->cluster_bits, 1)) != RT_OK)
            goto fail;
        shares = true;
    } else {
        uint64_t clusters = (bytes + s->cluster_size - 1) >> s->cluster_bits;
        if ((rc = rt__qcow2_alloc_clusters(vd, (uint32_t)clusters, false, &start)) != RT_OK)
            goto fail;
        held_first = start >> s->cluster_bits;
        held = clusters;
    }
    if ((rc = rt__vd_meta_write(vd, start, packed, bytes)) != RT_OK)
        goto fail;
    uint32_t shift = 62 - (s->cluster_bits - 8);
    uint64_t sectors_minus_one = ((start + bytes - 1) >> 9) - (start >> 9);
    uint64_t entry = QCOW2_COMPRESSED | sectors_minus_one << shift | start;
    uint32_t id;
    /* The data is written already: committable at the next flush.  Until the entry
     * names it, nothing does: a failure here gives its clusters back too. */
    if ((rc = repoint(vd, off >> s->cluster_bits, entry, ++vd->alloc_seq, &id)) != RT_OK)
        goto fail;
    free(packed);
    s->compressed_cursor = start + bytes; /* the next one packs in after it */
    return RT_OK;

fail:
    /* Nothing names what this write took: its references go back (the clusters stay
     * unused, as the allocator never hands a cluster out twice). */
    give_back(vd, &held_first, &held);
    if (shares)
        rt__qcow2_refcount_add(vd, start >> s->cluster_bits, -1);
    free(packed);
    return rc;
}
