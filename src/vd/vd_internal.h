/*
 * The virtual disk layer's inside: the image handle, and the table of operations a
 * format driver fills in.
 *
 * A driver only translates.  It says where a guest range lives in the image file
 * (map), reserves a new allocation unit on demand (alloc), and writes its own metadata
 * when the layer asks (commit).  Everything about I/O (alignment, bounce buffers,
 * splitting, ordering against other requests, the AIO context) belongs to the layer in
 * vd_queue.c, so a driver is small and every format gets the same guarantees.
 */
#ifndef RT_VD_INTERNAL_H
#define RT_VD_INTERNAL_H

#include <rt/err.h>
#include <rt/file.h>
#include <rt/vd.h>

#include <stdarg.h>
#include <stdbool.h>

/* Where a guest range lives, as map() answers it. */
enum vd_map_kind {
    VD_MAP_DATA,        /* stored at host_off in the image file */
    VD_MAP_ZERO,        /* recorded as zeros by the image's metadata */
    VD_MAP_UNALLOCATED, /* not described by the image: the backing file's, or zeros */
    VD_MAP_COMPRESSED,  /* stored compressed: read through read_compressed() */
};

struct vd_map {
    enum vd_map_kind kind;
    /* Which of the image's files holds the data (VD_MAP_DATA, VD_MAP_COMPRESSED): an
     * index into rt_vd.files, 0 for the image file itself. */
    uint32_t file;
    uint64_t length;   /* bytes from the asked offset with this answer; > 0 */
    uint64_t host_off; /* VD_MAP_DATA; VD_MAP_COMPRESSED: where the stored bytes start */
    uint64_t stored_len; /* VD_MAP_COMPRESSED: how many bytes are stored */
    /* VD_MAP_DATA that must not be written in place (a cluster an internal snapshot
     * shares): a write allocates a new unit, filled from this one. */
    bool shared;
};

/* A unit reserved by alloc(): the guest range [virt_off, virt_off + size) will live at
 * host_off once the layer has written all of it. */
struct vd_alloc {
    uint64_t virt_off;
    uint64_t host_off;
    uint32_t size;
    uint32_t index; /* the driver's own bookkeeping (VDI: block number) */
    uint32_t file;  /* which of the image's files host_off is in (rt_vd.files) */
    /* The unit's space was never written and reads as zeros (past the file's end when
     * it was opened, handed out once): the engine writes only the bytes that are not
     * zeros, as QEMU does, instead of filling the unit. */
    bool fresh;
};

/* Metadata a map() answer needs and the driver does not hold in memory.  The engine
 * reads [host_off, host_off + len) of file @a file with an op on its queue, gives the
 * bytes to load_done(), and asks map() again; requests that need the same load (same
 * key) wait for the one read. */
struct vd_load {
    uint32_t file;
    uint32_t len;
    uint64_t host_off;
    uint64_t key; /* the driver's name for what it loads (QCOW2: the L1 index) */
    uint64_t gen; /* the driver's: which state of the file the read was asked in */
};

/* map()'s answer when it filled *load instead (only when the caller gave one). */
#define VD_MAP_NEEDS_LOAD 1

/* What zero() did with the front of the range it was given. */
struct vd_zero {
    uint64_t length; /* bytes from the asked offset this answer covers; > 0 */
    /* They read as zeros now (or, discarding, are dropped), by metadata alone.  False:
     * the driver cannot do them that way; the engine writes zeros there (discarding,
     * leaves them), skipping what already reads as zeros. */
    bool done;
};

/* zero()'s @a how: RT_VD_ZERO_MAY_UNMAP, and this for a discard. */
#define VD_ZERO_DISCARD 0x80000000u

/* What a driver can do: the layer calls no operation the driver does not claim, and
 * tst_vd checks that every claimed operation is there. */
#define VD_CAP_CREATE           0x0001u /* create */
#define VD_CAP_WRITE            0x0002u /* opens writable */
#define VD_CAP_ALLOC            0x0004u /* alloc, alloc_done, commit: units on demand */
#define VD_CAP_COMPRESSED_READ  0x0008u /* maps VD_MAP_COMPRESSED: read_compressed */
#define VD_CAP_COMPRESSED_WRITE 0x0010u /* write_compressed */
#define VD_CAP_CHECK            0x0020u /* check (and repair) */
#define VD_CAP_BACKING          0x0040u /* images may name a backing file; create takes one */
#define VD_CAP_VERSION          0x0080u /* create takes a format version */

/* What the probe sees of a file: its first and last bytes (a fixed VHD is only a
 * footer; a DMG's trailer is at the end). */
struct vd_probe {
    const uint8_t *head, *tail;
    size_t head_len, tail_len; /* up to 4 KiB each; they overlap in a small file */
    uint64_t file_size;
};

struct vd_driver {
    const char *name;
    uint32_t caps;
    /* The format's own options (name NULL ends each list; NULL: none). */
    const rt_vd_option_t *create_options;
    const rt_vd_option_t *open_options;
    /* How sure the driver is that the file is its format: 0 not at all .. 100 certain. */
    int (*probe)(const struct vd_probe *probe);
    /* Reads and validates the metadata of vd->file; sets vd->size, vd->alloc_unit and
     * vd->priv.  Must not trust any field of the file before checking it.  @a options
     * are the caller's, already checked against open_options (NULL: none). */
    int (*open)(rt_vd_t vd, const char *const *options, rt_vd_error_t *err);
    /* Frees vd->priv.  The layer has committed already. */
    void (*close)(rt_vd_t vd);
    /* Writes a new image of opts->size into the empty @a file; opts->options are
     * checked against create_options. */
    int (*create)(rt_file_t file, const rt_vd_create_opts_t *opts, rt_vd_error_t *err);
    /* Describes [off, off + len); answers for a prefix of it at least one byte long.
     * With @a load not NULL, metadata not in memory is not read here: the driver fills
     * *load and returns VD_MAP_NEEDS_LOAD.  With NULL it reads it (synchronous callers). */
    int (*map)(rt_vd_t vd, uint64_t off, uint64_t len, struct vd_map *map, struct vd_load *load);
    /* The bytes of a load map() asked for (@a status not RT_OK: the read failed, and
     * @a data is NULL).  The driver checks and keeps them, or ignores them when what
     * it holds moved on meanwhile (the table was loaded or rewritten another way).
     * Returns RT_OK, or the failure every request waiting for the load gets. */
    int (*load_done)(rt_vd_t vd, const struct vd_load *load, const void *data, int status);
    /* Reserves the unit holding @a off (write path only; NULL for formats that never
     * allocate).  The in-memory map points at it at once; the layer calls alloc_done()
     * when the unit's data is written. */
    int (*alloc)(rt_vd_t vd, uint64_t off, struct vd_alloc *alloc);
    /* The unit's data write ended with @a status; on failure the driver forgets the
     * mapping (the space leaks, which check reports and repair reclaims). */
    void (*alloc_done)(rt_vd_t vd, const struct vd_alloc *alloc, int status, uint64_t seq);
    /* A plain write of guest bytes [off, off + len) into data the map already had is
     * done (NULL: nothing to track).  For formats that keep per-sector state beside the
     * data (VHD's sector bitmaps): what the next commit must also write. */
    void (*write_done)(rt_vd_t vd, uint64_t off, uint64_t len);
    /* Is the metadata kept for the next commit over the driver's budget (NULL: never)?
     * Then the engine commits without waiting for a flush (see vd_queue.c). */
    bool (*needs_writeback)(rt_vd_t vd);
    /* Makes durable the metadata of every allocation whose alloc_done() carried a
     * sequence number <= @a upto.  The layer has made that data durable before the call
     * and flushes the file after it.  NULL when there is never any. */
    int (*commit)(rt_vd_t vd, uint64_t upto);
    /* Fills @a buf with @a len guest bytes from @a in_unit bytes into the compressed
     * unit that @a map (a VD_MAP_COMPRESSED answer) describes.  Works from the map, not
     * the guest offset, so it still reads what a unit held after alloc() repointed it.
     * Synchronous. */
    int (*read_compressed)(rt_vd_t vd, const struct vd_map *map, uint64_t in_unit, void *buf,
                           size_t len);
    /* Writes the unit at @a off (a whole unit, zero-padded) compressed; 1 when it does
     * not shrink (the layer then writes it plainly).  NULL: not supported. */
    int (*write_compressed)(rt_vd_t vd, uint64_t off, const void *buf);
    /* Called once, before the first request that changes guest data (NULL: nothing
     * to do).  QCOW2 clears here the autoclear bits of structures it would not keep
     * current (dirty bitmaps): not at open, so that a read-only use or a repair of a
     * writable open leaves them valid. */
    int (*begin_write)(rt_vd_t vd);
    /* Makes the front of guest [off, off + len) read as zeros (or drops it, with
     * VD_ZERO_DISCARD in @a how) in memory, committed like an allocation with sequence
     * number @a seq (the engine has written nothing there meanwhile: the range is its
     * request's alone).  An answer ends at a unit boundary or at off + len.  NULL: the
     * engine writes zeros everywhere (and a discard does nothing). */
    int (*zero)(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t how, uint64_t seq,
                struct vd_zero *z);
    /* Sets the virtual size to @a size, a multiple of 512 (raw: any).  The layer has
     * refused what the caller did not allow, discarded the whole units past a smaller
     * size, and committed and flushed everything before the call.  The driver makes
     * the change durable before it returns, in an order a crash leaves either size in
     * (at worst with leaked space); on failure the image keeps its old size.  It does
     * not set vd->size (the layer does).  NULL: the format cannot be resized. */
    int (*resize)(rt_vd_t vd, uint64_t size, rt_vd_error_t *err);
    /* Internal snapshots (NULL: the format has none).  The layer has checked the
     * arguments and, for the three that change the image, that it is writable and idle,
     * and has committed and flushed everything.  Each makes its change durable before it
     * returns and leaves the driver's state as a fresh open would read the file; apply
     * sets vd->size to the snapshot's size, and calls rt__vd_begin_write() itself once
     * it has found the snapshot (a refused apply must leave dirty bitmaps valid). */
    int (*snapshot_list)(rt_vd_t vd, rt_vd_snapshot_t *out, uint32_t capacity, uint32_t *count,
                         rt_vd_error_t *err);
    int (*snapshot_create)(rt_vd_t vd, const char *name, rt_vd_snapshot_t *created,
                           rt_vd_error_t *err);
    int (*snapshot_apply)(rt_vd_t vd, const char *which, rt_vd_error_t *err);
    int (*snapshot_delete)(rt_vd_t vd, const char *which, rt_vd_error_t *err);
    /* The sizes a new image of @a opts would need, holding @a data bytes (the source's
     * data ranges rounded out to the unit unit_of() gives; 0 without a source).  NULL:
     * the format cannot be measured. */
    int (*measure)(const rt_vd_create_opts_t *opts, uint64_t data, rt_vd_measure_t *out,
                   rt_vd_error_t *err);
    /* The allocation unit a new image of @a opts would have (measure counts in it). */
    uint64_t (*unit_of)(const rt_vd_create_opts_t *opts);
    /* Makes the image name @a name (NULL: no backing file) with @a format (NULL: not
     * recorded) as its backing file, durably, in an order a crash leaves the old name
     * or the new one in; nothing else changes (NULL: the format has no backing files).
     * The layer has checked the names and made the data durable first. */
    int (*set_backing)(rt_vd_t vd, const char *name, const char *format, rt_vd_error_t *err);
    /* Drops every unit the image holds, durably and crash-safely, so that the backing
     * file shows everywhere (after a commit copied them into it).  NULL: not possible. */
    int (*make_empty)(rt_vd_t vd, rt_vd_error_t *err);
    /* Consistency check (NULL: nothing to check). */
    int (*check)(rt_vd_t vd, uint32_t flags, rt_vd_check_result_t *res);
    /* Fills the format-specific fields of @a info (block size, counts, variant). */
    void (*info)(rt_vd_t vd, rt_vd_info_t *info);
    /* Block status where it differs from map() (raw's holes); NULL to use map(). */
    int (*block_status)(rt_vd_t vd, uint64_t off, uint64_t len, rt_vd_extent_t *ext);
};

struct rt_vd_queue;
struct vd_io;
struct vd_job;

struct rt_vd {
    uint32_t magic; /* RT__MAGIC_VD while open */
    void *next_free; /* handle pool link */
    const struct vd_driver *driver;
    rt_file_t file; /* files[0] */
    /* Every file the image is made of, files[0] the image file itself: a format whose
     * data lives in several files (VMDK extents, an OVA's members) adds them at open,
     * and its map answers name them by index.  The layer closes them. */
    rt_file_t *files;
    uint32_t nfiles;
    size_t files_cap; /* once files is its own array (rt__vd_add_file) */
    bool read_only;
    bool no_cache;
    bool allow_backing;
    bool write_begun; /* driver->begin_write() has run */
    /* Guest-visible size. */
    uint64_t size;
    /* O_DIRECT transfers must be multiples of this, at offsets and addresses that are
     * (1 when cached: any transfer goes). */
    uint32_t align;
    /* Every host offset map() returns is a multiple of this (checked against align). */
    uint32_t data_align;
    /* The driver's allocation unit, 0 when it never allocates. */
    uint32_t alloc_unit;
    void *priv;
    /* The image this one's unallocated ranges come from (RT_VD_NIL: zeros), opened
     * by the driver through rt__vd_open_backing(); closed with this one. */
    rt_vd_t backing;
    /* The backing file as the image names it, and its recorded format (NULL: none);
     * set by rt__vd_open_backing() whether or not the file is opened. */
    char *backing_name, *backing_format;
    bool no_backing;       /* RT_VD_OPEN_NO_BACKING */
    bool force_share;      /* RT_VD_OPEN_FORCE_SHARE: no locks taken */
    bool backing_unopened; /* it names one, and no_backing kept it closed */
    unsigned chain_depth; /* 0 for the image the caller opened */
    char *path;

    /* Asynchronous state, owned by vd_queue.c. */
    struct rt_vd_queue *busy_queue; /* the queue holding this image's requests, if any */
    uint32_t outstanding;        /* requests accepted and not yet called back */
    struct vd_io *active_head;   /* accepted requests in arrival order */
    struct vd_io *active_tail;
    uint64_t alloc_seq; /* bumped as each allocation's data is written */
    /* Every change numbered up to this is durable, metadata included (a flush made it
     * so): a forced-unit-access write needs no commit while it equals alloc_seq. */
    uint64_t committed_seq;
    /* Allocation jobs not yet finished, oldest first, and how many were ever begun:
     * a flush waits for those begun before it. */
    struct vd_job *jobs_head, *jobs_tail;
    uint64_t jobs_created;
    struct vd_io *flush_waiters;
    /* Metadata loads in flight (vd_queue.c), each with the requests waiting for it. */
    struct vd_load_wait *loads;
    /* RT_OK, or the status of the fsync or commit that failed: every later write and
     * flush fails with it until the image is reopened. */
    int poisoned;
    /* RT_OK, or why the driver's state no longer describes the file (a reload after a
     * change made in the file failed): every request fails with it, reads too. */
    int lost_state;
    bool writeback_running; /* a write is committing for the metadata budget */
    struct rt_vd_queue *sync_queue;
};

/* The drivers, in probe order (raw last: it accepts anything). */
extern const struct vd_driver rt__vd_raw_driver;
extern const struct vd_driver rt__vd_vdi_driver;
extern const struct vd_driver rt__vd_qcow2_driver;
const struct vd_driver *rt__vd_driver_find(const char *name);
extern const struct vd_driver *const rt__vd_drivers[];

/* Makes room for one more item in a growable array of @a len items of @a item_size
 * bytes (capacity *@a cap, doubled when full, @a first_cap when empty).  Returns the
 * array, moved or not, or NULL when out of memory (the old array is then intact). */
void *rt__vd_grow(void *items, size_t *cap, size_t len, size_t item_size, size_t first_cap);

/* The value of option @a name in a checked "name=value" list (NULL: not given). */
const char *rt__vd_option(const char *const *options, const char *name);
/* What rt_vd_create() checks of @a shape before anything is created (flags, what the
 * format takes, its own options, a backing format's name). */
int rt__vd_check_create(const struct vd_driver *driver, const rt_vd_create_opts_t *shape,
                        rt_vd_error_t *err);

/* Parses a size option value ("64k", "1M", "4096"); false when it is not one. */
bool rt__vd_parse_size(const char *text, uint64_t *value);

/* Fills @a err (if not NULL) with a printf-style message and returns @a rc. */
int rt__vd_fail(rt_vd_error_t *err, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Opens the backing file @a name of @a vd (relative names are relative to the
 * directory of @a vd), read-only, with @a format or probing when NULL.  Refused with
 * RT_ERR_ACCESS_DENIED unless the caller allowed file references, and with
 * RT_ERR_VD_CORRUPT beyond the chain limit (a loop). */
int rt__vd_open_backing(rt_vd_t vd, const char *name, const char *format, rt_vd_error_t *err);
/* The open of rt__vd_open_backing() alone: the image @a name names as @a vd's backing
 * file would be opened, into *@a out, without making it @a vd's (rebase checks a new
 * one with it; the caller has the permission to follow it). */
int rt__vd_open_reference(rt_vd_t vd, const char *name, const char *format, rt_vd_t *out,
                          rt_vd_error_t *err);
/* What the calls that change an image's metadata outside the queue (snapshots, rebase,
 * commit) need: writable (RT_ERR_VD_READ_ONLY), idle (RT_ERR_BUSY), not poisoned. */
int rt__vd_ready_to_change(rt_vd_t vd, rt_vd_error_t *err);
/* The extent at @a off (< vd->size) to the end of the disk, for the walks over a whole
 * disk (rebase, commit, measure): rt_vd_block_status(), with an empty answer refused
 * as RT_ERR_VD_CORRUPT. */
int rt__vd_extent_at(rt_vd_t vd, uint64_t off, rt_vd_extent_t *ext);
/* Replaces the names rt_vd_get_info() reports (NULL: none). */
int rt__vd_set_backing_names(rt_vd_t vd, const char *name, const char *format);

/* Metadata I/O for drivers: positioned and synchronous, any offset and length, through
 * an aligned bounce buffer when the image is open with O_DIRECT. */
int rt__vd_meta_read(rt_vd_t vd, uint64_t off, void *buf, size_t len);
/* The same from file @a index of the image (RT_ERR_VD_CORRUPT for one it has not). */
int rt__vd_file_read(rt_vd_t vd, uint32_t index, uint64_t off, void *buf, size_t len);
/* Adds @a file to the image's files (the layer closes it with the image, or when the
 * open fails) and returns its index for map answers. */
int rt__vd_add_file(rt_vd_t vd, rt_file_t file, uint32_t *index);
int rt__vd_meta_write(rt_vd_t vd, uint64_t off, const void *buf, size_t len);

/* Runs the driver's begin_write() before the first write of the image. */
int rt__vd_begin_write(rt_vd_t vd);

/* An fsync of every file of the image for a driver's write ordering.  A failure poisons the
 * image (see vd_queue.c, "Durability"): the kernel may have dropped the pages. */
int rt__vd_meta_flush(rt_vd_t vd);

/* Makes [off, off + len) of the image file read as zeros without writing them (and
 * without needing free space): a punched hole, the file's size kept.
 * RT_ERR_NOT_SUPPORTED where the host or file system cannot. */
int rt__vd_punch(rt_vd_t vd, uint64_t off, uint64_t len);
/* Makes [off, off + len) of the image file read as zeros, its space kept allocated
 * (FALLOC_FL_ZERO_RANGE).  RT_ERR_NOT_SUPPORTED where the host or file system cannot. */
int rt__vd_zero_range(rt_vd_t vd, uint64_t off, uint64_t len);

/* Locks the open @a file (named @a path in messages) for a writer or a reader, with
 * QEMU's lock bytes (vd_lock.c).  RT_ERR_VD_LOCKED with a message on a conflict; RT_OK
 * where the file system cannot lock. */
int rt__vd_lock(rt_file_t file, const char *path, bool writer, rt_vd_error_t *err);

/* True for a handle that is open (vd.c). */
bool rt__vd_live(rt_vd_t vd);

/* Validation shared by the synchronous and asynchronous entries (vd.c). */
int rt__vd_check_request(rt_vd_t vd, int kind, uint64_t off, const rt_iovec_t *iov,
                         unsigned iovcnt, uint64_t *total);
/* Block status straight from map(). */
int rt__vd_map_status(rt_vd_t vd, uint64_t off, uint64_t len, rt_vd_extent_t *ext);

/* The queue engine (vd_queue.c). */
int rt__vd_queue_ensure_idle(rt_vd_t vd);
int rt__vd_sync_io(rt_vd_t vd, int kind, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt,
                   uint32_t flags);
/* A zero or discard request (VD_IO_ZERO, VD_IO_DISCARD) on the image's private queue. */
int rt__vd_sync_zero(rt_vd_t vd, int kind, uint64_t off, uint64_t len, uint32_t flags);
/* Validation of a zero or discard request (vd.c). */
int rt__vd_check_zero(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t flags);
void rt__vd_queue_release_sync(rt_vd_t vd);

enum vd_io_kind { VD_IO_READ, VD_IO_WRITE, VD_IO_FLUSH, VD_IO_ZERO, VD_IO_DISCARD };

/* Checked arithmetic for values read from an image: every offset + length, count x
 * entry size and table extent a driver computes from a field goes through these, so a
 * hostile field fails a check instead of wrapping past it.  Each returns false (and
 * leaves *out undefined) when the true result does not fit. */
static inline bool vd_add(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

static inline bool vd_mul(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

/* True when the @a len bytes at @a off lie wholly inside [0, @a limit). */
static inline bool vd_inside(uint64_t off, uint64_t len, uint64_t limit)
{
    return off <= limit && len <= limit - off;
}

/* True when @a count entries of @a size bytes at @a off lie wholly inside [0, @a limit);
 * stores their byte length in *@a bytes when it fits. */
static inline bool vd_table_inside(uint64_t off, uint64_t count, uint64_t size, uint64_t limit,
                                   uint64_t *bytes)
{
    uint64_t len;
    if (!vd_mul(count, size, &len))
        return false;
    if (bytes != NULL)
        *bytes = len;
    return vd_inside(off, len, limit);
}

/* Little-endian field access for on-disk structures. */
static inline uint32_t vd_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t vd_le64(const uint8_t *p)
{
    return (uint64_t)vd_le32(p) | (uint64_t)vd_le32(p + 4) << 32;
}

static inline void vd_put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void vd_put_le64(uint8_t *p, uint64_t v)
{
    vd_put_le32(p, (uint32_t)v);
    vd_put_le32(p + 4, (uint32_t)(v >> 32));
}

#endif /* RT_VD_INTERNAL_H */
