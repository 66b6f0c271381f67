/*
 * QCOW2 inside: the in-memory image state shared by the driver's files.
 *
 *   qcow2.c           header and extensions, open, map, reads (compressed too), info
 *   qcow2_metadata.c  the metadata index: every cluster a structure occupies (snapshot
 *                     and bitmap tables included), read at open with work bounded by
 *                     the file's size, and grown by every metadata allocation
 *   qcow2_refcount.c  refcounts: lookup, change, new blocks, table growth; the cluster
 *                     allocator
 *   qcow2_write.c     allocation (new and copied L2 tables, copy-on-write of shared
 *                     clusters), the flush-time commit, compressed writes
 *   qcow2_check.c     rebuilding every refcount from the metadata, leak repair
 *   qcow2_create.c    new images
 *   qcow2_resize.c    resize: the header's size, a larger L1 table
 *
 * All on-disk integers are big-endian; in memory, tables are kept in host order.
 *
 * Crash safety comes from the order in which commit() writes (see qcow2_write.c):
 * refcount increments before the pointers that need them, L2 tables before the L1
 * entries that point at them, decrements after the pointers that drop them.  A crash
 * between any two steps leaves refcounts too high (leaks), never too low.
 */
#ifndef RT_VD_QCOW2_H
#define RT_VD_QCOW2_H

#include "vd/vd_internal.h"

#define QCOW2_MAGIC 0x514649fbu

/* Header offsets. */
enum {
    QH_MAGIC = 0,
    QH_VERSION = 4,
    QH_BACKING_OFFSET = 8,
    QH_BACKING_SIZE = 16,
    QH_CLUSTER_BITS = 20,
    QH_SIZE = 24,
    QH_CRYPT = 32,
    QH_L1_SIZE = 36,
    QH_L1_OFFSET = 40,
    QH_RT_OFFSET = 48,
    QH_RT_CLUSTERS = 56,
    QH_NB_SNAPSHOTS = 60,
    QH_SNAPSHOTS_OFFSET = 64,
    QH_V2_LENGTH = 72,
    QH_INCOMPATIBLE = 72,
    QH_COMPATIBLE = 80,
    QH_AUTOCLEAR = 88,
    QH_REFCOUNT_ORDER = 96,
    QH_HEADER_LENGTH = 100,
    QH_COMPRESSION_TYPE = 104,
    QH_V3_LENGTH = 104,
    QH_V3_LENGTH_WITH_COMPRESSION = 112,
};

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)

/* Header extension types. */
#define QCOW2_EXT_END          0x00000000u
#define QCOW2_EXT_BACKING_FMT  0xe2792acau
#define QCOW2_EXT_FEATURE_NAME 0x6803f857u
#define QCOW2_EXT_DATA_FILE    0x44415441u
#define QCOW2_EXT_BITMAPS      0x23852875u
#define QCOW2_EXT_CRYPTO       0x0537be77u

/* Autoclear bits: bitmaps (their extension is valid only while set). */
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
/* Compatible bits: lazy refcounts. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

/* Table entries. */
#define QCOW2_COPIED      (1ull << 63)
#define QCOW2_COMPRESSED  (1ull << 62)
#define QCOW2_ZERO        (1ull << 0)
#define QCOW2_OFFSET_MASK 0x00fffffffffffe00ull /* bits 9..55 */
/* Bits an L1 entry must have clear (all but the offset and COPIED). */
#define QCOW2_L1_RESERVED 0x7f000000000001ffull
/* Bits a bitmap table entry must have clear (all but the offset and bit 0, "all ones"
 * when the offset is 0). */
#define QCOW2_BITMAP_RESERVED 0xff000000000001feull

/* Limits, as QEMU's: what a sane image never exceeds. */
#define QCOW2_MAX_L1_BYTES     (32u << 20)
#define QCOW2_MAX_RT_BYTES     (8u << 20)
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_SNAPSHOTS    65536u
#define QCOW2_MAX_BITMAPS      65535u
#define QCOW2_MAX_BITMAP_DIR   (64u << 20)
#define QCOW2_MAX_BITMAP_TABLE (0x8000000u) /* entries */

/* An L2 table in memory. */
struct qcow2_l2 {
    uint64_t host_off;
    uint64_t *entries; /* host order */
    bool dirty;        /* the file's copy is older than what commit would write */
    uint32_t pending;  /* allocations in it not yet committed */
};

/* A data allocation whose L2 entry is not yet in the file. */
struct qcow2_pending {
    uint32_t id;
    uint32_t l1_index, l2_index;
    uint64_t old_entry, new_entry;
    uint64_t seq; /* 0 while the data write is in flight */
};

/* A refcount decrement that waits until the pointers that dropped the cluster are in
 * the file: by pending id, or 0 for "at the next commit". */
struct qcow2_decrement {
    uint64_t cluster;
    uint32_t after_id;
};

/* A refcount block in memory. */
struct qcow2_rblock {
    uint8_t *data; /* file order (big-endian entries) */
    bool dirty;
};

struct qcow2 {
    uint8_t *header; /* cluster 0 as read (for rewriting the header) */
    uint32_t header_bytes;
    uint32_t version;
    uint32_t cluster_bits;
    uint32_t cluster_size;
    uint32_t l2_bits, l2_entries;
    uint64_t size;
    uint64_t incompatible, compatible, autoclear;
    bool header_dirty;

    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t *l1;
    bool l1_dirty;
    struct qcow2_l2 **l2; /* by L1 index; NULL until loaded (or after eviction) */
    uint64_t l2_cache_bytes; /* the l2-cache-size open option */
    uint32_t l2_loaded;
    uint64_t l2_writes; /* L2 tables written so far: a load from before one is stale */
    uint32_t evict_hand;

    uint32_t refcount_order, refcount_bits;
    uint64_t refcount_max;
    uint32_t rb_entries; /* refcounts per block */
    uint64_t rt_offset;
    uint32_t rt_clusters;
    uint64_t *rt; /* host order */
    uint64_t rt_entries;
    bool rt_dirty;
    struct qcow2_rblock *rblocks; /* by refcount table index */

    uint32_t nb_snapshots;
    uint64_t snapshots_offset;

    /* The bitmaps extension, when the header has one (nb_bitmaps 0 otherwise). */
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_offset, bitmap_dir_size;
    /* Header extensions this driver does not know (a repair refuses to run: they may
     * own clusters nothing here counts). */
    uint32_t unknown_extensions;

    char backing_name[QCOW2_MAX_BACKING_NAME + 1];
    char backing_format[32];

    /* Feature name table: names for unknown feature bits in messages. */
    struct {
        uint8_t type, bit;
        char name[47];
    } *features;
    uint32_t nb_features;

    uint64_t file_size_at_open;
    /* The metadata index (qcow2_metadata.c): clusters that held a structure at open
     * (header, L1 and refcount tables and blocks, L2 tables, snapshot and bitmap tables),
     * sorted, as cluster << 3 | role; and those allocated for metadata since, in
     * allocation order (which is address order).  No data entry may point at one, and
     * the allocator never hands one out. */
    uint64_t *metadata;
    size_t metadata_len;
    uint64_t *new_metadata;
    size_t new_metadata_len, new_metadata_cap;
    /* The allocator: clusters are handed out upwards from here (never below), skipping
     * any in the index or with a refcount above zero. */
    uint64_t next_free;
    uint64_t file_grown; /* the file's size as the allocator last set it (grow_ahead) */
    /* By L1 index: the L2 table has been written since open, so its entries may point
     * at clusters allocated since (below next_free) when it is read back. */
    uint8_t *l2_rewritten;
    uint64_t compressed_cursor; /* next free byte for compressed data, 0: none */

    struct qcow2_pending *pending;
    size_t pending_len, pending_cap;
    uint32_t next_id;
    struct qcow2_decrement *decrements;
    size_t decrements_len, decrements_cap;

    /* The last cluster inflated (by where its stored bytes are), for sequential reads of
     * compressed images and for filling a unit around a partial write. */
    bool inflated_valid;
    uint64_t inflated_host;
    uint8_t *inflated;
};

static inline uint32_t vd_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline uint64_t vd_be64(const uint8_t *p)
{
    return (uint64_t)vd_be32(p) << 32 | vd_be32(p + 4);
}

static inline uint16_t vd_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline void vd_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void vd_put_be64(uint8_t *p, uint64_t v)
{
    vd_put_be32(p, (uint32_t)(v >> 32));
    vd_put_be32(p + 4, (uint32_t)v);
}

static inline struct qcow2 *qcow2_of(rt_vd_t vd)
{
    return vd->priv;
}

/* Where a compressed L2 entry's bytes are: host offset and length. */
void rt__qcow2_compressed_span(const struct qcow2 *s, uint64_t entry, uint64_t *host,
                               uint64_t *bytes);

/* The L2 table of L1 entry @a l1_index, loaded and checked; NULL with *rc set if the
 * entry is empty (rc RT_OK) or bad. */
struct qcow2_l2 *rt__qcow2_l2_get(rt_vd_t vd, uint32_t l1_index, int *rc);
/* Drops clean L2 tables (never @a keep) until the cache, with room for @a extra more,
 * fits its size or nothing more can go. */
void rt__qcow2_trim_cache(struct qcow2 *s, uint32_t keep, uint32_t extra);
/* Cuts a file the allocator grew ahead back to the last cluster handed out (close). */
void rt__qcow2_trim_file(rt_vd_t vd);

/* The metadata index (qcow2_metadata.c). */
/* Called for each snapshot, with its L1 table read and in host order. */
typedef int rt__qcow2_snapshot_fn(void *ctx, uint32_t snapshot, uint64_t l1_offset,
                                  const uint64_t *l1, uint32_t entries);
/* Called for each structure of the bitmaps extension. */
typedef int rt__qcow2_range_fn(void *ctx, uint64_t off, uint64_t bytes, const char *what);
/* Walks the snapshot table: every entry inside the file, every L1 table aligned, inside
 * the file and disjoint from the others (checked before any is read, so each is read
 * once), @a fn called for each.  *@a table_end receives the end of the table.  The first
 * problem fails with RT_ERR_VD_CORRUPT and a message. */
int rt__qcow2_walk_snapshots(rt_vd_t vd, struct qcow2 *s, uint64_t file_size,
                             rt__qcow2_snapshot_fn *fn, void *ctx, uint64_t *table_end,
                             rt_vd_error_t *err);
/* Walks the bitmaps extension, while the autoclear bit says it is valid: @a fn for the
 * directory, each bitmap table and each data cluster a table names, each checked
 * (aligned, inside the file, reserved bits clear, tables disjoint) before use. */
int rt__qcow2_walk_bitmaps(rt_vd_t vd, struct qcow2 *s, uint64_t file_size,
                           rt__qcow2_range_fn *fn, void *ctx, rt_vd_error_t *err);
/* One L1 entry that names an L2 table. */
struct qcow2_l1_ref {
    uint64_t table; /* the table's offset */
    uint32_t index; /* the L1 entry's */
};
/* The entries of @a l1 that name a table, ordered by the table's offset, then index:
 * a walk over them reads each table once however many entries name it (a hostile image
 * can point a whole L1 table at one L2 table).  *@a count receives how many; NULL when
 * out of memory.  The caller frees the array. */
struct qcow2_l1_ref *rt__qcow2_l1_by_table(const uint64_t *l1, uint32_t entries,
                                           uint32_t *count);
/* The end of the group of @a refs starting at @a first: the entries naming its table. */
static inline uint32_t qcow2_group_end(const struct qcow2_l1_ref *refs, uint32_t count,
                                       uint32_t first)
{
    uint32_t end = first;
    while (end < count && refs[end].table == refs[first].table)
        end++;
    return end;
}
/* The units with data (plain or compressed) that the L2 table @a entries (host order)
 * gives the disk through the L1 entries @a refs[0..@a n) naming it: each entry counts
 * the table's entries that fall inside the disk's @a blocks units. */
uint64_t rt__qcow2_allocated_through(const struct qcow2 *s, const uint64_t *entries,
                                     const struct qcow2_l1_ref *refs, uint32_t n,
                                     uint64_t blocks);
/* Builds the index at open; refuses overlapping structures and tables outside the file.
 * Reads the snapshot and bitmap tables, each at most once. */
int rt__qcow2_index_metadata(rt_vd_t vd, struct qcow2 *s, uint64_t file_size, rt_vd_error_t *err);
bool rt__qcow2_is_metadata(const struct qcow2 *s, uint64_t cluster);
/* Adds @a count clusters from @a host, just handed out for metadata, to the index. */
int rt__qcow2_note_metadata(struct qcow2 *s, uint64_t host, uint64_t count);

/* Refcounts (qcow2_refcount.c). */
/* Sets entry @a index of a refcount block of width 2^@a order bits. */
void rt__qcow2_entry_set(uint8_t *block, uint32_t order, uint64_t index, uint64_t value);
int rt__qcow2_refcount_get(rt_vd_t vd, uint64_t cluster, uint64_t *refcount);
/* Adds @a delta to the count of @a cluster: RT_ERR_OUT_OF_RANGE past the width's
 * maximum, RT_ERR_VD_CORRUPT below zero (nothing changed either way). */
int rt__qcow2_refcount_add(rt_vd_t vd, uint64_t cluster, int64_t delta);
/* Lowers the count of @a cluster by @a amount (any 64-bit count); as above. */
int rt__qcow2_refcount_drop(rt_vd_t vd, uint64_t cluster, uint64_t amount);
/* Hands out @a count contiguous free clusters (refcount 1 each); returns the offset.
 * A free cluster is one at or past next_free, outside the metadata index, with a
 * refcount of 0.  @a metadata adds them to the index. */
int rt__qcow2_alloc_clusters(rt_vd_t vd, uint32_t count, bool metadata, uint64_t *host_off);
/* Writes dirty refcount blocks, then the refcount table and header if they changed. */
int rt__qcow2_refcount_flush(rt_vd_t vd);
/* Queues a refcount decrement of @a cluster for the commit that makes pending
 * allocation @a id durable (0: the next commit). */
int rt__qcow2_decrement_after(struct qcow2 *s, uint64_t cluster, uint32_t id);
/* Writes the header (cluster 0 up to the extensions) with current fields. */
int rt__qcow2_header_write(rt_vd_t vd);
/* The header fields that resize and the snapshot operations switch, all in its first
 * sector: one write makes the switch, crash-safe. */
struct qcow2_header_switch {
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t size;
    uint32_t l1_size;
    uint64_t l1_offset;
};
/* The fields as memory has them now. */
struct qcow2_header_switch rt__qcow2_header_now(const struct qcow2 *s);
/* Writes the header with @a to's fields and flushes; on failure the header in memory is
 * as before (the file may have either: a reload reads which).  The fields of struct
 * qcow2 are the caller's to update once it succeeded. */
int rt__qcow2_header_switch(rt_vd_t vd, const struct qcow2_header_switch *to);

/* The driver operations of the other files. */
int rt__qcow2_alloc(rt_vd_t vd, uint64_t off, struct vd_alloc *alloc);
void rt__qcow2_alloc_done(rt_vd_t vd, const struct vd_alloc *alloc, int status, uint64_t seq);
int rt__qcow2_commit(rt_vd_t vd, uint64_t upto);
int rt__qcow2_check(rt_vd_t vd, uint32_t flags, rt_vd_check_result_t *res);
int rt__qcow2_resize(rt_vd_t vd, uint64_t size, rt_vd_error_t *err);
/* Internal snapshots (qcow2_snapshot.c). */
int rt__qcow2_snapshot_list(rt_vd_t vd, rt_vd_snapshot_t *out, uint32_t capacity, uint32_t *count,
                            rt_vd_error_t *err);
int rt__qcow2_snapshot_create(rt_vd_t vd, const char *name, rt_vd_snapshot_t *created,
                              rt_vd_error_t *err);
int rt__qcow2_snapshot_apply(rt_vd_t vd, const char *which, rt_vd_error_t *err);
int rt__qcow2_snapshot_delete(rt_vd_t vd, const char *which, rt_vd_error_t *err);
/* The driver's make_empty() (qcow2_snapshot.c). */
int rt__qcow2_make_empty(rt_vd_t vd, rt_vd_error_t *err);
/* The driver's set_backing() (qcow2_backing.c). */
int rt__qcow2_set_backing(rt_vd_t vd, const char *name, const char *format, rt_vd_error_t *err);
/* Replaces the in-memory state with what a fresh open reads from the file now (after
 * a change made directly in the file); nothing may be pending.  On failure the handle
 * is poisoned. */
int rt__qcow2_reload(rt_vd_t vd, rt_vd_error_t *err);
/* Fails with RT_ERR_VD_CORRUPT and the first problem when a check finds corruptions
 * (leaks are fine): what must hold before clusters are shared or freed by count. */
int rt__qcow2_require_consistent(rt_vd_t vd, rt_vd_error_t *err);
/* Sets COPIED on the active L1 and L2 entries whose cluster's count is 1 (after counts
 * fell) and commits the tables it changed. */
int rt__qcow2_set_copied(rt_vd_t vd);
/* Calls @a fn for every host cluster an L2 entry references (a compressed entry's
 * bytes may span two or more). */
int rt__qcow2_for_each_referenced(const struct qcow2 *s, uint64_t entry,
                                  int (*fn)(void *ctx, uint64_t cluster), void *ctx);
int rt__qcow2_create(rt_file_t file, const rt_vd_create_opts_t *opts, rt_vd_error_t *err);
/* Appends one header extension (type, length, data padded to 8 bytes) to cluster 0 at
 * *@a at, ending at or before @a room; false when it does not fit (qcow2_create.c). */
bool rt__qcow2_put_extension(uint8_t *h, uint32_t room, uint32_t *at, uint32_t type,
                             const void *data, size_t len);
int rt__qcow2_measure(const rt_vd_create_opts_t *opts, uint64_t data, rt_vd_measure_t *out,
                      rt_vd_error_t *err);
uint64_t rt__qcow2_unit_of(const rt_vd_create_opts_t *opts);
int rt__qcow2_write_compressed(rt_vd_t vd, uint64_t off, const void *buf);
/* The driver's zero(): zero clusters, dropped clusters (see rt_vd_write_zeroes()). */
int rt__qcow2_zero(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t how, uint64_t seq,
                   struct vd_zero *z);

#endif /* RT_VD_QCOW2_H */
