/*
 * QCOW2 internal snapshots: list, create, apply, delete; and emptying the disk (what a
 * commit does to the image it committed), which is an apply of an empty table.
 *
 * A snapshot is an entry of the snapshot table naming a copy of an L1 table; the L2
 * tables and data clusters under it are shared with the disk by reference count.  A
 * reference counts once for every L1 entry that reaches it (the L2 table named, and each
 * cluster that table's entries name), which is how qemu-img check counts: a cluster that
 * the disk and one snapshot reach has a count of 2, its COPIED flag ("the count is
 * exactly 1") is clear, and the write path copies it before changing it.
 *
 * Every change reaches the file in the driver's order (qcow2.h): counts raised and
 * durable before the pointers that need them, new tables written to new clusters and
 * switched to by one header write (a single sector: atomic), counts lowered only after
 * the pointers that dropped them are durable.  A crash at any point leaves the image
 * before or after the operation, with leaked space at worst.  Afterwards the driver's
 * state is read back from the file as a fresh open reads it (rt__qcow2_reload()), so
 * that nothing in memory can disagree with what the file now says.
 *
 * Before any of this, the image's counts are checked against its metadata: sharing or
 * freeing by count is only safe where the counts are right.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vd/qcow2.h"

/* Snapshot table entries: the fixed part; the extra data written here (the VM state
 * size as 64 bits, the disk size, the instruction count), as QEMU writes it. */
#define ENTRY_FIXED 40u
#define ENTRY_EXTRA 24u
/* The whole table, at most (QEMU's limit). */
#define MAX_TABLE_BYTES (64u << 20)

/* A positive return that stops a walk early without failing it. */
#define WALK_STOP 1

static uint64_t pad8(uint64_t n)
{
    return (n + 7u) & ~7ull;
}

/* ---------------------------------------------------------------------------------- */
/* The snapshot table: read, described, matched, written. */

struct sn_entry {
    uint8_t *raw; /* the entry as the file has it, without the padding */
    uint32_t len;
};

struct sn_table {
    struct sn_entry *entries;
    uint32_t count;
    uint64_t bytes; /* with the padding: what the table occupies */
};

static void table_free(struct sn_table *t)
{
    for (uint32_t i = 0; i < t->count; i++)
        free(t->entries[i].raw);
    free(t->entries);
    memset(t, 0, sizeof(*t));
}

static uint32_t entry_extra_len(const struct sn_entry *e)
{
    return vd_be32(e->raw + 36);
}

static uint64_t entry_l1_offset(const struct sn_entry *e)
{
    return vd_be64(e->raw);
}

static uint32_t entry_l1_size(const struct sn_entry *e)
{
    return vd_be32(e->raw + 8);
}

static const uint8_t *entry_id(const struct sn_entry *e, uint16_t *len)
{
    *len = vd_be16(e->raw + 12);
    return e->raw + ENTRY_FIXED + entry_extra_len(e);
}

static const uint8_t *entry_name(const struct sn_entry *e, uint16_t *len)
{
    uint16_t id_len;
    const uint8_t *id = entry_id(e, &id_len);
    *len = vd_be16(e->raw + 14);
    return id + id_len;
}

/* A 64-bit field of the extra data at @a at, or @a fallback when the entry is shorter. */
static uint64_t entry_extra64(const struct sn_entry *e, uint32_t at, uint64_t fallback)
{
    return entry_extra_len(e) >= at + 8u ? vd_be64(e->raw + ENTRY_FIXED + at) : fallback;
}

/* Reads the table the header names; every entry inside the file and the whole table
 * inside MAX_TABLE_BYTES. */
static int table_read(rt_vd_t vd, struct qcow2 *s, struct sn_table *t, rt_vd_error_t *err)
{
    memset(t, 0, sizeof(*t));
    uint64_t file_size = 0;
    int rc = rt_file_get_size(vd->file, &file_size);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot read the file size");
    if (s->nb_snapshots == 0)
        return RT_OK;
    t->entries = calloc(s->nb_snapshots, sizeof(*t->entries));
    if (t->entries == NULL)
        return RT_ERR_NO_MEMORY;
    uint64_t at = s->snapshots_offset;
    for (uint32_t n = 0; n < s->nb_snapshots; n++) {
        uint8_t fixed[ENTRY_FIXED];
        if (!vd_inside(at, sizeof(fixed), file_size)) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 snapshot table entry %u runs past the end of the file", n);
            goto fail;
        }
        if ((rc = rt__vd_meta_read(vd, at, fixed, sizeof(fixed))) != RT_OK) {
            rt__vd_fail(err, rc, "cannot read the QCOW2 snapshot table");
            goto fail;
        }
        uint64_t len =
            ENTRY_FIXED + (uint64_t)vd_be32(fixed + 36) + vd_be16(fixed + 12) + vd_be16(fixed + 14);
        if (!vd_inside(at, len, file_size) || t->bytes + pad8(len) > MAX_TABLE_BYTES) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "QCOW2 snapshot table entry %u runs past the end of the file or "
                             "makes the table larger than %u MiB",
                             n, MAX_TABLE_BYTES >> 20);
            goto fail;
        }
        struct sn_entry *e = &t->entries[n];
        if ((e->raw = malloc((size_t)len)) == NULL) {
            rc = RT_ERR_NO_MEMORY;
            goto fail;
        }
        e->len = (uint32_t)len;
        t->count = n + 1;
        if ((rc = rt__vd_meta_read(vd, at, e->raw, (size_t)len)) != RT_OK) {
            rt__vd_fail(err, rc, "cannot read the QCOW2 snapshot table");
            goto fail;
        }
        t->bytes += pad8(len);
        at += pad8(len);
    }
    return RT_OK;
fail:
    table_free(t);
    return rc;
}

static void copy_text(char *dst, size_t room, const uint8_t *src, uint16_t len, int *cut)
{
    size_t n = len < room - 1 ? len : room - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    if (n < len)
        *cut = 1;
}

static void describe(const struct sn_entry *e, rt_vd_snapshot_t *out)
{
    memset(out, 0, sizeof(*out));
    uint16_t id_len, name_len;
    const uint8_t *id = entry_id(e, &id_len);
    const uint8_t *name = entry_name(e, &name_len);
    copy_text(out->id, sizeof(out->id), id, id_len, &out->truncated);
    copy_text(out->name, sizeof(out->name), name, name_len, &out->truncated);
    out->date_sec = vd_be32(e->raw + 16);
    out->date_nsec = vd_be32(e->raw + 20);
    out->vm_clock_nsec = vd_be64(e->raw + 24);
    out->vm_state_size = entry_extra64(e, 0, vd_be32(e->raw + 32));
    out->disk_size = entry_extra64(e, 8, 0);
    out->icount = entry_extra64(e, 16, UINT64_MAX);
}

static bool text_is(const uint8_t *text, uint16_t len, const char *want)
{
    return strlen(want) == len && memcmp(text, want, len) == 0;
}

/* The index of the first snapshot whose ID (@a by_id) or name is @a want, or -1. */
static int64_t find_by(const struct sn_table *t, const char *want, bool by_id)
{
    for (uint32_t i = 0; i < t->count; i++) {
        uint16_t len;
        const uint8_t *text =
            by_id ? entry_id(&t->entries[i], &len) : entry_name(&t->entries[i], &len);
        if (text_is(text, len, want))
            return i;
    }
    return -1;
}

static int not_found(rt_vd_error_t *err, const char *which)
{
    return rt__vd_fail(err, RT_ERR_FILE_NOT_FOUND, "the image has no snapshot with ID or name '%s'",
                       which);
}

/* One past the largest number among the IDs, as QEMU numbers them (an ID that is not a
 * number counts as 0). */
static uint64_t next_id(const struct sn_table *t)
{
    uint64_t max = 0;
    for (uint32_t i = 0; i < t->count; i++) {
        uint16_t len;
        const uint8_t *id = entry_id(&t->entries[i], &len);
        uint64_t v = 0;
        for (uint16_t k = 0; k < len && id[k] >= '0' && id[k] <= '9'; k++) {
            if (v > (UINT64_MAX - 9) / 10) {
                v = 0;
                break;
            }
            v = v * 10 + (uint64_t)(id[k] - '0');
        }
        if (v > max)
            max = v;
    }
    return max + 1;
}

/* A new entry: @a id, @a name, the time now, the disk's size and L1 table. */
static int entry_make(struct qcow2 *s, const char *id, const char *name, uint64_t l1_offset,
                      struct sn_entry *e, rt_vd_snapshot_t *created)
{
    size_t id_len = strlen(id), name_len = strlen(name);
    e->len = (uint32_t)(ENTRY_FIXED + ENTRY_EXTRA + id_len + name_len);
    e->raw = calloc(1, e->len);
    if (e->raw == NULL)
        return RT_ERR_NO_MEMORY;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint8_t *p = e->raw;
    vd_put_be64(p, l1_offset);
    vd_put_be32(p + 8, s->l1_size);
    p[12] = (uint8_t)(id_len >> 8), p[13] = (uint8_t)id_len;
    p[14] = (uint8_t)(name_len >> 8), p[15] = (uint8_t)name_len;
    vd_put_be32(p + 16, (uint32_t)now.tv_sec);
    vd_put_be32(p + 20, (uint32_t)now.tv_nsec);
    vd_put_be32(p + 36, ENTRY_EXTRA);
    vd_put_be64(p + ENTRY_FIXED + 8, s->size); /* VM state 0, icount 0 */
    memcpy(p + ENTRY_FIXED + ENTRY_EXTRA, id, id_len);
    memcpy(p + ENTRY_FIXED + ENTRY_EXTRA + id_len, name, name_len);
    if (created != NULL)
        describe(e, created);
    return RT_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Counting what an L1 table reaches. */

struct counting {
    rt_vd_t vd;
    bool raise;     /* +times, or -times */
    uint64_t times; /* the L1 entries naming the current L2 table */
    uint64_t done;  /* changes made */
    uint64_t limit; /* stop after this many (an undo walks the raise's order) */
    /* Clusters a lowering freed, punched out of the file in runs. */
    uint64_t run_first, run_len;
};

static void punch_run(struct counting *c)
{
    struct qcow2 *s = qcow2_of(c->vd);
    if (c->run_len > 0)
        (void)rt__vd_punch(c->vd, c->run_first << s->cluster_bits, c->run_len << s->cluster_bits);
    c->run_len = 0;
}

static int count_cluster(void *ctx, uint64_t cluster)
{
    struct counting *c = ctx;
    if (c->done == c->limit)
        return WALK_STOP;
    int rc = c->raise ? rt__qcow2_refcount_add(c->vd, cluster, (int64_t)c->times)
                      : rt__qcow2_refcount_drop(c->vd, cluster, c->times);
    if (rc != RT_OK)
        return rc;
    c->done++;
    uint64_t left = 1;
    if (!c->raise && rt__qcow2_refcount_get(c->vd, cluster, &left) == RT_OK && left == 0) {
        /* Nothing references it now: its space goes back (only space; a failure
         * changes nothing). */
        if (c->run_len > 0 && cluster == c->run_first + c->run_len) {
            c->run_len++;
        } else {
            punch_run(c);
            c->run_first = cluster;
            c->run_len = 1;
        }
    }
    return RT_OK;
}

/* Called for each L2 table reached, with its entries as the file has them. */
typedef int table_fn(rt_vd_t vd, uint64_t host, uint8_t *raw);

/* Walks the L2 tables @a l1 names, each read once however many entries name it: with
 * @a c, counts the table and every cluster its entries reference (each as often as
 * entries name the table); with @a fn, hands each table to it. */
static int walk_l1(rt_vd_t vd, const uint64_t *l1, uint32_t entries, struct counting *c,
                   table_fn *fn)
{
    struct qcow2 *s = qcow2_of(vd);
    uint32_t count;
    struct qcow2_l1_ref *refs = rt__qcow2_l1_by_table(l1, entries, &count);
    uint8_t *raw = malloc(s->cluster_size);
    int rc = refs != NULL && raw != NULL ? RT_OK : RT_ERR_NO_MEMORY;
    for (uint32_t a = 0, b = 0; rc == RT_OK && a < count; a = b) {
        uint64_t host = refs[a].table;
        b = qcow2_group_end(refs, count, a);
        if (c != NULL) {
            c->times = b - a;
            if ((rc = count_cluster(c, host >> s->cluster_bits)) != RT_OK)
                break;
        }
        if ((rc = rt__vd_meta_read(vd, host, raw, s->cluster_size)) != RT_OK)
            break;
        for (uint32_t j = 0; c != NULL && rc == RT_OK && j < s->l2_entries; j++)
            rc = rt__qcow2_for_each_referenced(s, vd_be64(raw + 8u * j), count_cluster, c);
        if (rc == RT_OK && fn != NULL)
            rc = fn(vd, host, raw);
    }
    free(raw);
    free(refs);
    return rc == WALK_STOP ? RT_OK : rc;
}

/* Raises the counts of everything @a l1 reaches by one; on failure lowers again what it
 * raised, so that memory is as before (nothing was written). */
static int raise_reach(rt_vd_t vd, const uint64_t *l1, uint32_t entries, rt_vd_error_t *err)
{
    struct counting up = {vd, true, 0, 0, UINT64_MAX, 0, 0};
    int rc = walk_l1(vd, l1, entries, &up, NULL);
    if (rc == RT_OK)
        return RT_OK;
    struct counting down = {vd, false, 0, 0, up.done, 0, 0};
    (void)walk_l1(vd, l1, entries, &down, NULL); /* counts were >= 1: none frees */
    if (rc == RT_ERR_OUT_OF_RANGE)
        return rt__vd_fail(err, rc,
                           "a cluster's reference count would pass what %u-bit refcounts hold",
                           qcow2_of(vd)->refcount_bits);
    return rt__vd_fail(err, rc, "cannot count the snapshot's references");
}

/* Lowers the counts of everything @a l1 reaches by one, punching what is freed. */
static int lower_reach(rt_vd_t vd, const uint64_t *l1, uint32_t entries)
{
    struct counting down = {vd, false, 0, 0, UINT64_MAX, 0, 0};
    int rc = walk_l1(vd, l1, entries, &down, NULL);
    punch_run(&down);
    return rc;
}

/* Lowers the counts of the clusters [@a off, @a off + @a bytes) by one (a table that
 * nothing points at any more). */
static int lower_range(rt_vd_t vd, uint64_t off, uint64_t bytes)
{
    struct qcow2 *s = qcow2_of(vd);
    struct counting down = {vd, false, 1, 0, UINT64_MAX, 0, 0};
    int rc = RT_OK;
    for (uint64_t k = 0; rc == RT_OK && k < (bytes + s->cluster_size - 1) >> s->cluster_bits; k++)
        rc = count_cluster(&down, (off >> s->cluster_bits) + k);
    punch_run(&down);
    return rc;
}

/* A table now shared: COPIED cleared from its entries, in place (only the flag changes,
 * and a clear flag only costs a copy on write, so a torn write is harmless). */
static int clear_copied_table(rt_vd_t vd, uint64_t host, uint8_t *raw)
{
    struct qcow2 *s = qcow2_of(vd);
    bool changed = false;
    for (uint32_t j = 0; j < s->l2_entries; j++) {
        uint64_t e = vd_be64(raw + 8u * j);
        if ((e & QCOW2_COPIED) && !(e & QCOW2_COMPRESSED)) {
            vd_put_be64(raw + 8u * j, e & ~QCOW2_COPIED);
            changed = true;
        }
    }
    return changed ? rt__vd_meta_write(vd, host, raw, s->cluster_size) : RT_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Tables written to new clusters. */

/* Writes @a entries L1 entries (COPIED cleared: every table they name is shared; NULL:
 * all empty) to new clusters; *@a host receives where (0 for a table of no entries). */
static int write_l1_copy(rt_vd_t vd, const uint64_t *l1, uint32_t entries, uint64_t *host)
{
    struct qcow2 *s = qcow2_of(vd);
    *host = 0;
    if (entries == 0)
        return RT_OK;
    uint64_t bytes = (uint64_t)entries * 8u;
    uint32_t clusters = (uint32_t)((bytes + s->cluster_size - 1) >> s->cluster_bits);
    uint8_t *raw = calloc(clusters, s->cluster_size);
    if (raw == NULL)
        return RT_ERR_NO_MEMORY;
    for (uint32_t i = 0; l1 != NULL && i < entries; i++)
        vd_put_be64(raw + 8u * i, l1[i] & ~QCOW2_COPIED);
    int rc = rt__qcow2_alloc_clusters(vd, clusters, true, host);
    if (rc == RT_OK)
        rc = rt__vd_meta_write(vd, *host, raw, (size_t)clusters << s->cluster_bits);
    free(raw);
    return rc;
}

/* Writes @a t to new clusters; *@a host receives where (0 for an empty table). */
static int write_table(rt_vd_t vd, const struct sn_table *t, uint64_t *host)
{
    struct qcow2 *s = qcow2_of(vd);
    *host = 0;
    if (t->count == 0)
        return RT_OK;
    uint32_t clusters = (uint32_t)((t->bytes + s->cluster_size - 1) >> s->cluster_bits);
    uint8_t *raw = calloc(clusters, s->cluster_size);
    if (raw == NULL)
        return RT_ERR_NO_MEMORY;
    uint64_t at = 0;
    for (uint32_t i = 0; i < t->count; i++) {
        memcpy(raw + at, t->entries[i].raw, t->entries[i].len);
        at += pad8(t->entries[i].len);
    }
    int rc = rt__qcow2_alloc_clusters(vd, clusters, true, host);
    if (rc == RT_OK)
        rc = rt__vd_meta_write(vd, *host, raw, (size_t)clusters << s->cluster_bits);
    free(raw);
    return rc;
}

/* Counts raised in memory, and the tables written, made durable: what must hold before
 * a header write may point at them. */
static int make_durable(rt_vd_t vd)
{
    int rc = rt__qcow2_refcount_flush(vd);
    return rc == RT_OK ? rt__vd_meta_flush(vd) : rc;
}

/* Makes @a l1 (NULL: @a entries empty entries) the disk's L1 table and @a size its
 * size: the table written to new clusters and made durable, COPIED flags left over in
 * the tables it names cleared, one header write switching to it, then the references
 * of the table it replaces dropped (a failure from there on leaks; @a done says what
 * happened in that message).  The counts of what @a l1 reaches are the caller's. */
static int switch_active(rt_vd_t vd, const uint64_t *l1, uint32_t entries, uint64_t size,
                         const char *done, rt_vd_error_t *err)
{
    struct qcow2 *s = qcow2_of(vd);
    const uint64_t *old_l1 = s->l1;
    uint32_t old_size = s->l1_size;
    uint64_t old_offset = s->l1_offset;
    struct qcow2_header_switch to = rt__qcow2_header_now(s);
    int rc;
    if ((rc = write_l1_copy(vd, l1, entries, &to.l1_offset)) != RT_OK ||
        (rc = make_durable(vd)) != RT_OK)
        return rt__vd_fail(err, rc, "cannot write the new L1 table");
    /* Tables a snapshot shares normally have their COPIED flags clear already; any
     * left over goes before the switch. */
    if (l1 != NULL && ((rc = walk_l1(vd, l1, entries, NULL, clear_copied_table)) != RT_OK ||
                       (rc = rt__vd_meta_flush(vd)) != RT_OK))
        return rt__vd_fail(err, rc, "cannot clear the COPIED flags of the new tables");
    to.size = size;
    to.l1_size = entries;
    if ((rc = rt__qcow2_header_switch(vd, &to)) != RT_OK)
        return rt__vd_fail(err, rc, "cannot write the QCOW2 header");
    /* What the disk held before is unreferenced now (what a snapshot shares stays, by
     * its counts). */
    if ((rc = lower_reach(vd, old_l1, old_size)) == RT_OK &&
        (rc = lower_range(vd, old_offset, (uint64_t)old_size * 8u)) == RT_OK)
        rc = make_durable(vd);
    return rc != RT_OK ? rt__vd_fail(err, rc, "%s, but freeing what the disk held failed", done)
                       : RT_OK;
}

/* Ends an operation that changed the file: the state read back from it.  The
 * operation's own status wins over the reload's. */
static int finish(rt_vd_t vd, int rc, rt_vd_error_t *err)
{
    rt_vd_error_t reload_err;
    int reloaded = rt__qcow2_reload(vd, &reload_err);
    if (rc != RT_OK)
        return rc;
    if (reloaded != RT_OK)
        return rt__vd_fail(err, reloaded,
                           "the change is in the file, but reading it back failed "
                           "(close the image): %s",
                           reload_err.msg);
    return RT_OK;
}

/* ---------------------------------------------------------------------------------- */
/* The operations. */

int rt__qcow2_snapshot_list(rt_vd_t vd, rt_vd_snapshot_t *out, uint32_t capacity, uint32_t *count,
                            rt_vd_error_t *err)
{
    struct sn_table t;
    int rc = table_read(vd, qcow2_of(vd), &t, err);
    if (rc != RT_OK)
        return rc;
    for (uint32_t i = 0; i < t.count && i < capacity; i++)
        describe(&t.entries[i], &out[i]);
    *count = t.count;
    table_free(&t);
    return RT_OK;
}

int rt__qcow2_snapshot_create(rt_vd_t vd, const char *name, rt_vd_snapshot_t *created,
                              rt_vd_error_t *err)
{
    struct qcow2 *s = qcow2_of(vd);
    struct sn_table t;
    int rc = rt__qcow2_require_consistent(vd, err);
    if (rc != RT_OK || (rc = table_read(vd, s, &t, err)) != RT_OK)
        return rc;
    struct sn_entry *grown = NULL;
    if (t.count >= QCOW2_MAX_SNAPSHOTS) {
        rc = rt__vd_fail(err, RT_ERR_OUT_OF_RANGE, "the image already has %u snapshots",
                         QCOW2_MAX_SNAPSHOTS);
        goto out;
    }
    char id[24];
    snprintf(id, sizeof(id), "%" PRIu64, next_id(&t));
    uint64_t entry_bytes = pad8(ENTRY_FIXED + ENTRY_EXTRA + strlen(id) + strlen(name));
    if (t.bytes + entry_bytes > MAX_TABLE_BYTES) {
        rc = rt__vd_fail(err, RT_ERR_OUT_OF_RANGE, "the snapshot table would pass %u MiB",
                         MAX_TABLE_BYTES >> 20);
        goto out;
    }
    if ((grown = realloc(t.entries, (t.count + 1) * sizeof(*grown))) == NULL) {
        rc = RT_ERR_NO_MEMORY;
        goto out;
    }
    t.entries = grown;
    /* Counts first, in memory only: a failure here is undone and nothing was written. */
    if ((rc = raise_reach(vd, s->l1, s->l1_size, err)) != RT_OK)
        goto out;

    uint64_t l1_copy = 0, table = 0;
    uint64_t old_table = s->snapshots_offset, old_bytes = t.bytes;
    struct qcow2_header_switch to = rt__qcow2_header_now(s);
    if ((rc = write_l1_copy(vd, s->l1, s->l1_size, &l1_copy)) != RT_OK ||
        (rc = entry_make(s, id, name, l1_copy, &t.entries[t.count], created)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot write the snapshot's L1 table");
        goto changed;
    }
    t.bytes += pad8(t.entries[t.count].len);
    t.count++;
    if ((rc = write_table(vd, &t, &table)) != RT_OK || (rc = make_durable(vd)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot write the new snapshot table");
        goto changed;
    }
    /* The disk's tables are shared now: their COPIED flags go before the header makes
     * the snapshot real (a write in place through a stale flag would change it). */
    for (uint32_t i = 0; i < s->l1_size; i++)
        s->l1[i] &= ~QCOW2_COPIED;
    s->l1_dirty = true;
    if ((rc = walk_l1(vd, s->l1, s->l1_size, NULL, clear_copied_table)) != RT_OK ||
        (rc = rt__qcow2_commit(vd, vd->alloc_seq)) < 0 || (rc = rt__vd_meta_flush(vd)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot clear the COPIED flags of the disk's tables");
        goto changed;
    }
    to.nb_snapshots = t.count;
    to.snapshots_offset = table;
    if ((rc = rt__qcow2_header_switch(vd, &to)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot write the QCOW2 header");
        goto changed;
    }
    /* The old table is unreferenced: a failure from here only leaks its space. */
    if ((rc = lower_range(vd, old_table, old_bytes)) == RT_OK)
        rc = make_durable(vd);
    if (rc != RT_OK)
        rt__vd_fail(err, rc, "the snapshot was made, but freeing the old snapshot table failed");
changed:
    rc = finish(vd, rc, err);
out:
    table_free(&t);
    return rc;
}

/* The snapshot's L1 table, in host order, with room for @a entries entries (the rest
 * empty); COPIED cleared, as every table it names is now shared. */
static int read_snapshot_l1(rt_vd_t vd, const struct sn_entry *e, uint32_t entries, uint64_t **out)
{
    uint32_t stored = entry_l1_size(e);
    uint64_t *l1 = calloc(entries ? entries : 1, sizeof(*l1));
    uint8_t *raw = malloc(stored ? (size_t)stored * 8u : 1);
    int rc = l1 != NULL && raw != NULL ? RT_OK : RT_ERR_NO_MEMORY;
    if (rc == RT_OK && stored > 0)
        rc = rt__vd_meta_read(vd, entry_l1_offset(e), raw, (size_t)stored * 8u);
    for (uint32_t i = 0; rc == RT_OK && i < stored; i++)
        l1[i] = vd_be64(raw + 8u * i) & ~QCOW2_COPIED;
    free(raw);
    if (rc != RT_OK) {
        free(l1);
        return rc;
    }
    *out = l1;
    return RT_OK;
}

int rt__qcow2_snapshot_apply(rt_vd_t vd, const char *which, rt_vd_error_t *err)
{
    struct qcow2 *s = qcow2_of(vd);
    struct sn_table t;
    uint64_t *l1 = NULL;
    int rc = rt__qcow2_require_consistent(vd, err);
    if (rc != RT_OK || (rc = table_read(vd, s, &t, err)) != RT_OK)
        return rc;
    int64_t k = find_by(&t, which, true);
    if (k < 0)
        k = find_by(&t, which, false);
    if (k < 0) {
        rc = not_found(err, which);
        goto out;
    }
    const struct sn_entry *e = &t.entries[k];
    /* Its size (a version 2 entry may not say: the disk's), and an L1 table large
     * enough for it. */
    uint64_t size = entry_extra64(e, 8, s->size);
    uint64_t l1_span = (uint64_t)s->cluster_size << s->l2_bits;
    uint64_t needed = size / l1_span + (size % l1_span != 0);
    uint64_t entries = entry_l1_size(e) > needed ? entry_l1_size(e) : needed;
    if (size % 512u != 0 || size > (1ull << 61) || entries * 8u > QCOW2_MAX_L1_BYTES) {
        rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                         "snapshot '%s' records a bad disk size (%" PRIu64 ")", which, size);
        goto out;
    }
    if ((rc = read_snapshot_l1(vd, e, (uint32_t)entries, &l1)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot read the snapshot's L1 table");
        goto out;
    }
    /* The disk's contents are about to change: bitmaps stop being valid now, not
     * before the snapshot was found and the image checked. */
    if ((rc = rt__vd_begin_write(vd)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot prepare the image for writing");
        goto out;
    }
    if ((rc = raise_reach(vd, l1, (uint32_t)entries, err)) != RT_OK)
        goto out;

    rc = switch_active(vd, l1, (uint32_t)entries, size, "the snapshot was applied", err);
    rc = finish(vd, rc, err);
out:
    free(l1);
    table_free(&t);
    return rc;
}

int rt__qcow2_snapshot_delete(rt_vd_t vd, const char *which, rt_vd_error_t *err)
{
    struct qcow2 *s = qcow2_of(vd);
    struct sn_table t;
    uint64_t *l1 = NULL;
    uint8_t *gone_raw = NULL;
    int rc = rt__qcow2_require_consistent(vd, err);
    if (rc != RT_OK || (rc = table_read(vd, s, &t, err)) != RT_OK)
        return rc;
    int64_t k = find_by(&t, which, false);
    if (k < 0)
        k = find_by(&t, which, true);
    if (k < 0) {
        rc = not_found(err, which);
        goto out;
    }
    const struct sn_entry *gone = &t.entries[k];
    uint32_t gone_entries = entry_l1_size(gone);
    uint64_t gone_l1 = entry_l1_offset(gone);
    if ((rc = read_snapshot_l1(vd, gone, gone_entries, &l1)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot read the snapshot's L1 table");
        goto out;
    }
    uint64_t old_table = s->snapshots_offset, old_bytes = t.bytes;
    gone_raw = gone->raw; /* out of the table now, still ours to free */
    t.bytes -= pad8(gone->len);
    memmove(&t.entries[k], &t.entries[k + 1], (t.count - (uint32_t)k - 1) * sizeof(*t.entries));
    t.count--;
    uint64_t table = 0;
    struct qcow2_header_switch to = rt__qcow2_header_now(s);
    if ((rc = write_table(vd, &t, &table)) != RT_OK || (rc = make_durable(vd)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot write the new snapshot table");
        goto changed;
    }
    to.nb_snapshots = t.count;
    to.snapshots_offset = table;
    if ((rc = rt__qcow2_header_switch(vd, &to)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot write the QCOW2 header");
        goto changed;
    }
    /* The snapshot is gone from the image: a failure from here only leaks space. */
    if ((rc = lower_reach(vd, l1, gone_entries)) == RT_OK &&
        (rc = lower_range(vd, gone_l1, (uint64_t)gone_entries * 8u)) == RT_OK &&
        (rc = lower_range(vd, old_table, old_bytes)) == RT_OK && (rc = make_durable(vd)) == RT_OK &&
        /* Counts that fell to 1 make their entries the owners again (after the counts:
         * a crash between only costs a copy on the next write). */
        (rc = rt__qcow2_set_copied(vd)) == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc != RT_OK)
        rt__vd_fail(err, rc, "the snapshot was deleted, but freeing its clusters failed");
changed:
    rc = finish(vd, rc, err);
out:
    free(gone_raw);
    free(l1);
    table_free(&t);
    return rc;
}

/* ---------------------------------------------------------------------------------- */
/* Emptying the disk (after a commit): the same switch as an apply, to an empty table. */

int rt__qcow2_make_empty(rt_vd_t vd, rt_vd_error_t *err)
{
    struct qcow2 *s = qcow2_of(vd);
    int rc = rt__qcow2_require_consistent(vd, err);
    if (rc != RT_OK)
        return rc;
    rc = switch_active(vd, NULL, s->l1_size, s->size, "the image was emptied", err);
    return finish(vd, rc, err);
}
