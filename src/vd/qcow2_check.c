/*
 * QCOW2 check: rebuild every cluster's reference count from the metadata and compare it
 * with the stored count, as qemu-img check does: stored below references is a
 * corruption (a cluster could be handed out twice), stored above is a leak.  Counted:
 * the header, the active L1 and L2 tables, the refcount table and blocks, the snapshot
 * table and each snapshot's L1 and L2 tables, and the bitmap directory, bitmap tables and
 * bitmap data clusters (while the bitmaps autoclear bit says they are valid, as QEMU
 * counts them).  Also: references past the end of the file or unaligned, reserved bits
 * in any L1 or L2 entry (active or a snapshot's), and COPIED flags of the active tables
 * that disagree with the refcount.
 *
 * Repair (leaks only) lowers each leaked count to the references found.  It refuses to
 * run when the check found a corruption, or when the header has an extension this
 * driver does not know: a structure it cannot see may own clusters that look leaked, and
 * freeing them would hand live data out again.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vd/qcow2.h"

struct census {
    rt_vd_t vd;
    struct qcow2 *s;
    uint32_t *refs;
    uint64_t clusters; /* clusters the file holds */
    rt_vd_check_result_t *res;
};

static void problem(struct census *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Counts a corruption; the first one is described. */
static void problem(struct census *c, const char *fmt, ...)
{
    if (c->res->corruptions++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->res->first_problem, sizeof(c->res->first_problem), fmt, ap);
        va_end(ap);
    }
}

/* Each reference counts @a times (the number of L1 entries naming the table it is in).
 * Counts stop at CENSUS_MAX: a cluster that reaches it has more references than any
 * refcount QEMU writes, and is reported as a corruption (which also keeps repair from
 * trusting a count it could not finish). */
#define CENSUS_MAX UINT32_MAX

static void count_range(struct census *c, uint64_t off, uint64_t bytes, const char *what,
                        uint64_t times)
{
    if (bytes == 0)
        return;
    uint64_t first = off >> c->s->cluster_bits;
    uint64_t last = (off + bytes - 1) >> c->s->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        if (k >= c->clusters) {
            if (c->res->corruptions++ == 0)
                snprintf(c->res->first_problem, sizeof(c->res->first_problem),
                         "%s at 0x%llx is past the end of the file", what,
                         (unsigned long long)off);
            return;
        }
        if (times < CENSUS_MAX - c->refs[k]) {
            c->refs[k] += (uint32_t)times;
        } else if (c->refs[k] != CENSUS_MAX) {
            c->refs[k] = CENSUS_MAX;
            problem(c, "cluster %llu has %u or more references, more than any refcount "
                       "this check counts",
                    (unsigned long long)k, CENSUS_MAX);
        }
    }
}

static void count_entry(struct census *c, uint64_t entry, uint64_t times)
{
    struct qcow2 *s = c->s;
    if (entry & QCOW2_COMPRESSED) {
        uint64_t host, bytes;
        rt__qcow2_compressed_span(s, entry, &host, &bytes);
        count_range(c, host, bytes, "compressed cluster", times);
        return;
    }
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    if (host == 0)
        return;
    if (host % s->cluster_size != 0) {
        problem(c, "L2 entry 0x%llx points at unaligned offset 0x%llx",
                (unsigned long long)entry, (unsigned long long)host);
        return;
    }
    count_range(c, host, s->cluster_size, "data cluster", times);
}

/* The entries of one L2 table at @a l2, named by @a times L1 entries. */
static void count_l2(struct census *c, uint64_t l2, const uint64_t *entries, uint64_t times)
{
    struct qcow2 *s = c->s;
    for (uint32_t j = 0; j < s->l2_entries; j++) {
        uint64_t e = entries[j];
        uint64_t reserved = ~(QCOW2_OFFSET_MASK | QCOW2_COPIED | QCOW2_ZERO);
        if (!(e & QCOW2_COMPRESSED) && (e & reserved))
            problem(c, "L2 table at 0x%llx: entry %u (0x%016llx) has reserved bits set",
                    (unsigned long long)l2, j, (unsigned long long)e);
        /* A compressed cluster may be shared by neighbours packed into it; it is never
         * its entry's alone. */
        if ((e & QCOW2_COMPRESSED) && (e & QCOW2_COPIED))
            problem(c, "L2 table at 0x%llx: entry %u (0x%016llx) is compressed with the "
                       "COPIED flag set",
                    (unsigned long long)l2, j, (unsigned long long)e);
        count_entry(c, e, times);
    }
}

/* The fragmentation of the table in @a raw as qemu-img check measures it: compressed
 * units, and units not right after the previous data unit of the same table (every
 * compressed unit counts as fragmented). */
static void count_fragments(struct census *c, const uint64_t *entries, uint64_t times)
{
    struct qcow2 *s = c->s;
    uint64_t next = 0, compressed = 0, fragmented = 0;
    for (uint32_t j = 0; j < s->l2_entries; j++) {
        uint64_t e = entries[j], host = e & QCOW2_OFFSET_MASK;
        if (e & QCOW2_COMPRESSED) {
            compressed++;
            fragmented++;
        } else if (host != 0) {
            fragmented += next != 0 && host != next;
            next = host + s->cluster_size;
        }
    }
    c->res->blocks_compressed += compressed * times;
    c->res->blocks_fragmented += fragmented * times;
}

/* Counts an L1 table and everything under it; @a active also counts allocations.
 * @a snapshot names the table's owner in messages (UINT32_MAX: the active one).  Each
 * L2 table is read once however many entries name it; its references count as many
 * times. */
static int count_l1(struct census *c, const uint64_t *l1, uint32_t l1_size, bool active,
                    uint32_t snapshot)
{
    struct qcow2 *s = c->s;
    for (uint32_t i = 0; i < l1_size; i++) {
        if (!(l1[i] & QCOW2_L1_RESERVED))
            continue;
        if (active)
            problem(c, "L1 entry %u (0x%016llx) has reserved bits set", i,
                    (unsigned long long)l1[i]);
        else
            problem(c, "snapshot %u: L1 entry %u (0x%016llx) has reserved bits set", snapshot,
                    i, (unsigned long long)l1[i]);
    }
    uint32_t count;
    struct qcow2_l1_ref *refs = rt__qcow2_l1_by_table(l1, l1_size, &count);
    uint8_t *raw = malloc(s->cluster_size);
    uint64_t *entries = malloc(s->cluster_size); /* the table, in host order */
    int rc = refs != NULL && raw != NULL && entries != NULL ? RT_OK : RT_ERR_NO_MEMORY;
    for (uint32_t a = 0, b = 0; rc == RT_OK && a < count; a = b) {
        uint64_t l2 = refs[a].table;
        b = qcow2_group_end(refs, count, a);
        if (l2 % s->cluster_size != 0 || (l2 >> s->cluster_bits) >= c->clusters) {
            for (uint32_t k = a; k < b; k++)
                problem(c, "L1 entry %llu points at bad L2 offset 0x%llx",
                        (unsigned long long)refs[k].index, (unsigned long long)l2);
            continue;
        }
        count_range(c, l2, s->cluster_size, "L2 table", b - a);
        /* The active table as this handle has it (it may hold changes not yet in the
         * file), else as the file has it. */
        const struct qcow2_l2 *cached = active ? s->l2[refs[a].index] : NULL;
        if (cached != NULL) {
            memcpy(entries, cached->entries, s->cluster_size);
        } else if ((rc = rt__vd_meta_read(c->vd, l2, raw, s->cluster_size)) != RT_OK) {
            break;
        } else {
            for (uint32_t j = 0; j < s->l2_entries; j++)
                entries[j] = vd_be64(raw + 8u * j);
        }
        count_l2(c, l2, entries, b - a);
        if (!active)
            continue;
        count_fragments(c, entries, b - a);
        c->res->blocks_allocated +=
            rt__qcow2_allocated_through(s, entries, refs + a, b - a, c->res->blocks_total);
    }
    free(entries);
    free(raw);
    free(refs);
    return rc;
}

static int count_snapshot(void *ctx, uint32_t snapshot, uint64_t l1_offset, const uint64_t *l1,
                          uint32_t entries)
{
    struct census *c = ctx;
    count_range(c, l1_offset, (uint64_t)entries * 8u, "snapshot L1 table", 1);
    return count_l1(c, l1, entries, false, snapshot);
}

/* The snapshot table and the tables it names.  Open has checked their layout; if the
 * file changed since, the problem is counted and what it left uncounted makes the
 * repair refuse (a corruption was found). */
static int count_snapshots(struct census *c, uint64_t file_size)
{
    struct qcow2 *s = c->s;
    rt_vd_error_t err = {{0}};
    uint64_t table_end = s->snapshots_offset;
    int rc = rt__qcow2_walk_snapshots(c->vd, s, file_size, count_snapshot, c, &table_end, &err);
    if (rc == RT_ERR_VD_CORRUPT) {
        problem(c, "%s", err.msg);
        return RT_OK;
    }
    if (rc == RT_OK && s->nb_snapshots > 0)
        count_range(c, s->snapshots_offset, table_end - s->snapshots_offset, "snapshot table", 1);
    return rc;
}

static int count_bitmap_range(void *ctx, uint64_t off, uint64_t bytes, const char *what)
{
    count_range(ctx, off, bytes, what, 1);
    return RT_OK;
}

static int count_bitmaps(struct census *c, uint64_t file_size)
{
    rt_vd_error_t err = {{0}};
    int rc = rt__qcow2_walk_bitmaps(c->vd, c->s, file_size, count_bitmap_range, c, &err);
    if (rc == RT_ERR_VD_CORRUPT) {
        problem(c, "%s", err.msg);
        return RT_OK;
    }
    return rc;
}

/* COPIED means "written in place": wrong, and a corruption, only where the cluster has
 * more than one reference (a write in place would change what another table sees).
 * Judged by the references found, not the stored count: a flag set where the count is
 * too high but the references are 1 is a leak (what a crash leaves between raising the
 * counts for a new snapshot and clearing the flags), and a flag missing only costs a
 * copy on the next write (what a crash leaves the other way round).  qemu-img check
 * calls both errors; its repair, like ours, leaves them right. */
static bool copied_wrongly(const struct census *c, uint64_t entry, uint64_t cluster)
{
    return (entry & QCOW2_COPIED) && cluster < c->clusters && c->refs[cluster] != 1;
}

/* Active tables only.  With @a fix (after a leak repair, which can bring a count down
 * to 1) a missing COPIED on an entry whose only reference it is gets set, by the stored
 * count; *@a fixed counts them.  Each L2 table is walked once, however many L1 entries
 * name it. */
static int walk_copied(struct census *c, bool fix, uint64_t *fixed)
{
    struct qcow2 *s = c->s;
    uint32_t count;
    struct qcow2_l1_ref *refs = rt__qcow2_l1_by_table(s->l1, s->l1_size, &count);
    if (refs == NULL)
        return RT_ERR_NO_MEMORY;
    int rc = RT_OK;
    for (uint32_t a = 0, b = 0; rc == RT_OK && a < count; a = b) {
        uint64_t l2 = refs[a].table;
        b = qcow2_group_end(refs, count, a);
        if ((l2 >> s->cluster_bits) >= c->clusters)
            continue;
        uint64_t refcount;
        if ((rc = rt__qcow2_refcount_get(c->vd, l2 >> s->cluster_bits, &refcount)) != RT_OK)
            break;
        for (uint32_t k = a; k < b; k++) {
            uint32_t i = refs[k].index;
            if (fix && refcount == 1 && !(s->l1[i] & QCOW2_COPIED)) {
                s->l1[i] |= QCOW2_COPIED;
                s->l1_dirty = true;
                (*fixed)++;
            } else if (!fix && copied_wrongly(c, s->l1[i], l2 >> s->cluster_bits)) {
                problem(c, "L1 entry %llu: COPIED flag set on an L2 table with %u references",
                        (unsigned long long)i, c->refs[l2 >> s->cluster_bits]);
            }
        }
        struct qcow2_l2 *t = rt__qcow2_l2_get(c->vd, refs[a].index, &rc);
        if (rc == RT_ERR_VD_CORRUPT) {
            /* Refused on load (an entry out of bounds or into metadata): counted as
             * such, and the references it holds were counted from the file already. */
            if (!fix)
                problem(c, "L2 table of L1 entry %llu has an entry past the end of the file, "
                           "into metadata, or with reserved bits set",
                        (unsigned long long)refs[a].index);
            rc = RT_OK;
            continue;
        }
        for (uint32_t j = 0; rc == RT_OK && t != NULL && j < s->l2_entries; j++) {
            uint64_t e = t->entries[j];
            uint64_t host = e & QCOW2_OFFSET_MASK;
            if ((e & QCOW2_COMPRESSED) || host == 0 || (host >> s->cluster_bits) >= c->clusters)
                continue;
            if ((rc = rt__qcow2_refcount_get(c->vd, host >> s->cluster_bits, &refcount)) != RT_OK)
                break;
            if (fix && refcount == 1 && !(e & QCOW2_COPIED)) {
                t->entries[j] = e | QCOW2_COPIED;
                t->dirty = true;
                (*fixed)++;
            } else if (!fix && copied_wrongly(c, e, host >> s->cluster_bits)) {
                problem(c,
                        "L2 entry for data at 0x%llx: COPIED flag set on a cluster with %u "
                        "references",
                        (unsigned long long)host, c->refs[host >> s->cluster_bits]);
            }
        }
    }
    free(refs);
    return rc;
}

/* Stored against found, over every cluster either side knows of: the file's, and those
 * of each refcount block that exists (an absent block counts zeros).  Counts (or, with
 * @a repair, lowers) each leak. */
static int compare(struct census *c, bool repair)
{
    struct qcow2 *s = c->s;
    rt_vd_check_result_t *res = c->res;
    uint64_t last = c->clusters;
    for (uint64_t i = 0; i < s->rt_entries; i++)
        if (s->rt[i] != 0 && (i + 1) * s->rb_entries > last)
            last = (i + 1) * s->rb_entries;
    uint64_t leaked_first = UINT64_MAX;
    int rc = RT_OK;
    for (uint64_t k = 0; rc == RT_OK && k < last; k++) {
        uint64_t index = k / s->rb_entries;
        if (index < s->rt_entries && s->rt[index] == 0 && k >= c->clusters) {
            k = (index + 1) * s->rb_entries - 1; /* nothing stored, nothing found */
            continue;
        }
        uint64_t stored;
        if ((rc = rt__qcow2_refcount_get(c->vd, k, &stored)) != RT_OK)
            break;
        uint64_t found = k < c->clusters ? c->refs[k] : 0;
        if (!repair && (stored != 0 || found != 0))
            res->image_end_offset = (k + 1) << s->cluster_bits;
        if (found == CENSUS_MAX)
            continue; /* uncountable, reported as a corruption */
        if (stored < found && !repair) {
            problem(c, "cluster %llu has refcount %llu but %llu references",
                    (unsigned long long)k, (unsigned long long)stored, (unsigned long long)found);
        } else if (stored > found && repair) {
            rc = rt__qcow2_refcount_drop(c->vd, k, stored - found);
            if (rc == RT_OK)
                res->leaks_fixed++;
        } else if (stored > found && res->leaks++ == 0) {
            leaked_first = k;
        }
    }
    if (!repair && res->leaks > 0 && res->first_problem[0] == '\0')
        snprintf(res->first_problem, sizeof(res->first_problem),
                 "%llu clusters are leaked (the first is cluster %llu)",
                 (unsigned long long)res->leaks, (unsigned long long)leaked_first);
    return rc;
}

int rt__qcow2_check(rt_vd_t vd, uint32_t flags, rt_vd_check_result_t *res)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t file_size = 0;
    int rc = rt_file_get_size(vd->file, &file_size);
    if (rc != RT_OK)
        return rc;
    struct census c = {vd, s, NULL, (file_size + s->cluster_size - 1) >> s->cluster_bits, res};
    c.refs = calloc((size_t)c.clusters + 1, sizeof(*c.refs));
    if (c.refs == NULL)
        return RT_ERR_NO_MEMORY;
    res->blocks_total = (s->size + s->cluster_size - 1) >> s->cluster_bits;

    count_range(&c, 0, s->cluster_size, "header", 1);
    count_range(&c, s->l1_offset, (uint64_t)s->l1_size * 8u, "L1 table", 1);
    rc = count_l1(&c, s->l1, s->l1_size, true, UINT32_MAX);
    if (rc == RT_OK)
        rc = count_snapshots(&c, file_size);
    if (rc == RT_OK)
        rc = count_bitmaps(&c, file_size);
    count_range(&c, s->rt_offset, (uint64_t)s->rt_clusters * s->cluster_size, "refcount table",
                1);
    for (uint64_t i = 0; i < s->rt_entries; i++)
        if (s->rt[i] != 0)
            count_range(&c, s->rt[i], s->cluster_size, "refcount block", 1);
    uint64_t copied_fixed = 0;
    if (rc == RT_OK)
        rc = walk_copied(&c, false, &copied_fixed);

    if (rc == RT_OK)
        rc = compare(&c, false);
    if (rc == RT_OK && res->leaks > 0 && (flags & RT_VD_CHECK_REPAIR_LEAKS)) {
        if (res->corruptions > 0)
            snprintf(res->repair_refused, sizeof(res->repair_refused),
                     "leaks are not reclaimed while the image has corruptions: the "
                     "references counted may be incomplete");
        else if (s->unknown_extensions > 0)
            snprintf(res->repair_refused, sizeof(res->repair_refused),
                     "the image has %u header extension(s) this library does not know, which "
                     "may own the clusters that look leaked",
                     s->unknown_extensions);
        else
            rc = compare(&c, true);
    }
    if (rc == RT_OK && res->leaks_fixed > 0) {
        /* A count brought down to 1 makes the entry holding that one reference the
         * cluster's owner: its COPIED flag goes on (after the counts, so that a crash
         * between leaves a flag missing, which only costs a copy on the next write). */
        rc = walk_copied(&c, true, &copied_fixed);
        if (rc == RT_OK)
            rc = rt__qcow2_refcount_flush(vd);
        if (rc == RT_OK)
            rc = rt__vd_meta_flush(vd);
        if (rc == RT_OK && copied_fixed > 0) {
            int committed = rt__qcow2_commit(vd, vd->alloc_seq);
            if (committed < 0)
                rc = committed;
        }
        if (rc == RT_OK)
            res->leaks -= res->leaks_fixed;
    }
    free(c.refs);
    return rc;
}

int rt__qcow2_require_consistent(rt_vd_t vd, rt_vd_error_t *err)
{
    rt_vd_check_result_t res;
    memset(&res, 0, sizeof(res));
    int rc = rt__qcow2_check(vd, 0, &res);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot check the image's reference counts first");
    if (res.corruptions > 0)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "the image's metadata is inconsistent (%llu problems; the first: %s)",
                           (unsigned long long)res.corruptions, res.first_problem);
    return RT_OK;
}

int rt__qcow2_set_copied(rt_vd_t vd)
{
    struct qcow2 *s = qcow2_of(vd);
    uint64_t file_size = 0;
    int rc = rt_file_get_size(vd->file, &file_size);
    if (rc != RT_OK)
        return rc;
    rt_vd_check_result_t res;
    memset(&res, 0, sizeof(res));
    struct census c = {vd, s, NULL, (file_size + s->cluster_size - 1) >> s->cluster_bits, &res};
    uint64_t fixed = 0;
    rc = walk_copied(&c, true, &fixed);
    if (rc == RT_OK && fixed > 0) {
        int committed = rt__qcow2_commit(vd, vd->alloc_seq);
        if (committed < 0)
            rc = committed;
    }
    return rc;
}
