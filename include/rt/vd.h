/*
 * Virtual disks: open, create, read, write, flush and inspect disk images (raw, VDI,
 * QCOW2) through one interface, synchronously or asynchronously on the file AIO API.
 *
 * Offsets and lengths are in bytes of the guest-visible (virtual) disk and need no
 * alignment: the layer rounds to the image's sectors, bounces through aligned memory
 * when the image is open with RT_VD_OPEN_NO_CACHE, and serializes writes that share a
 * sector or allocate a block, so a driver never sees an unaligned or racing request.
 *
 * Threading: an image handle, and every queue that carries its requests, is used by one
 * thread at a time (a hypervisor's I/O thread).  Different images may be used from
 * different threads at once.  rt_vd_queue_wakeup() is the one call any thread may make.
 */
#ifndef RT_VD_H
#define RT_VD_H

#include <rt/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An open disk image. */
typedef struct rt_vd *rt_vd_t;
/** A queue of asynchronous image requests, running on its own rt_aio context. */
typedef struct rt_vd_queue *rt_vd_queue_t;

#define RT_VD_NIL       ((rt_vd_t)NULL)
#define RT_VD_QUEUE_NIL ((rt_vd_queue_t)NULL)

/** Why a call failed, in words that name the problem ("VDI block map entry 7 points
 *  past the end of the file").  Empty when the status says it all. */
typedef struct rt_vd_error {
    char msg[256];
} rt_vd_error_t;

/* rt_vd_open() flags: any combination. */
/** Open for reading only; writes fail with RT_ERR_VD_READ_ONLY. */
#define RT_VD_OPEN_READ_ONLY 0x00000001u
/** Bypass the host page cache (O_DIRECT).  Callers still pass any offset, length and
 *  buffer: the layer bounces what is not aligned. */
#define RT_VD_OPEN_NO_CACHE 0x00000002u
/** Allow the image to open other files it names (a backing file).  Without it, an
 *  image that references another file fails to open with RT_ERR_ACCESS_DENIED.  A
 *  chain is followed up to 256 images deep, counting the one opened; deeper (or a
 *  loop) fails with RT_ERR_VD_CORRUPT. */
#define RT_VD_OPEN_ALLOW_BACKING 0x00000004u
/** Open the image alone, for its metadata: a backing file it names is not opened (nor
 *  looked for), and rt_vd_get_info() reports its name.  Not together with
 *  RT_VD_OPEN_ALLOW_BACKING (else RT_ERR_INVALID_PARAMETER).  On an image that has a
 *  backing file, reads, writes, zeroes, discards, rt_vd_block_status() and
 *  rt_vd_resize() fail with RT_ERR_ACCESS_DENIED (what the backing file holds is
 *  unknown); rt_vd_get_info(), rt_vd_check() (and its repair), the snapshot calls and
 *  an unsafe rt_vd_rebase() work: that is how a backing file that moved or is gone is
 *  named again (qemu-img rebase -u).  On an image without one it changes nothing.
 *  Read-only, it is what qemu-img info does (BDRV_O_NO_BACKING). */
#define RT_VD_OPEN_NO_BACKING 0x00000008u
/** Read an image whatever locks others hold on it, taking none (qemu-img's -U,
 *  force-share): for inspecting the disk of a running guest, whose data may change
 *  under the reader.  Only with RT_VD_OPEN_READ_ONLY (else RT_ERR_INVALID_PARAMETER);
 *  applies to the backing files too.
 *
 *  Without it every open locks each file of the image and of its backing chain with
 *  QEMU's OFD lock bytes (see doc/vd.md, "Locks"): a writable open excludes every other
 *  open of the file, a read-only one excludes writers; QEMU honours the same locks.
 *  A conflict fails the open with RT_ERR_VD_LOCKED and a message naming the lock.
 *  Two handles in one process exclude each other too.  File systems without OFD locks
 *  open unlocked. */
#define RT_VD_OPEN_FORCE_SHARE 0x00000010u

/**
 * Opens an image.
 *
 * Probing (@a format NULL) is allowed only with RT_VD_OPEN_READ_ONLY: a guest can write
 * anything into a raw image, including another format's header, so a writable open
 * that trusted the probe could be turned into a different format by the guest.
 *
 * @param vd      receives the handle; RT_VD_NIL on failure.
 * @param path    the image file.
 * @param format  "raw", "vdi", "qcow2", or NULL to probe (read-only opens only).
 * @param flags   RT_VD_OPEN_* bits.
 * @param err     optional; receives a message naming the problem on failure.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_POINTER    @a vd or @a path is NULL.
 * @retval RT_ERR_INVALID_PARAMETER  unknown flag bit; @a format NULL on a writable open.
 * @retval RT_ERR_VD_UNKNOWN_FORMAT  @a format names no driver, or the probe found none.
 * @retval RT_ERR_VD_CORRUPT         a header field, size or table entry is invalid.
 * @retval RT_ERR_NOT_SUPPORTED      a valid image using a feature this library lacks
 *                                   (a VDI differencing image), or NO_CACHE refused.
 * @retval RT_ERR_VD_LOCKED          another open of the file (this process's or
 *                                   another's, QEMU's included) holds a conflicting
 *                                   lock (see RT_VD_OPEN_FORCE_SHARE).
 * @retval RT_ERR_ACCESS_DENIED      the image names another file and
 *                                   RT_VD_OPEN_ALLOW_BACKING is not set; or the OS said so.
 * @retval RT_ERR_IS_A_DIRECTORY     @a path (or a backing file) is a directory.
 * @retval RT_ERR_NOT_SUPPORTED      ... or it is a FIFO, socket or character device:
 *                                   images are regular files or block devices.  The
 *                                   open never waits (a FIFO does not block it).
 * @retval RT_ERR_NO_MEMORY, and the statuses of rt_file_open() and rt_file_read_at().
 */
int rt_vd_open(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
               rt_vd_error_t *err);

/**
 * rt_vd_open() with format options: "name=value" strings ending with NULL, each one
 * the format lists in rt_vd_format_options(format, RT_VD_OPTIONS_OPEN) (QCOW2:
 * "l2-cache-size=1M").  A probed open (@a format NULL) takes none.
 *
 * @retval the statuses of rt_vd_open(), and RT_ERR_INVALID_PARAMETER for an option the
 *         format does not take or a value it refuses (named in @a err).
 */
int rt_vd_open_with(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
                    const char *const *options, rt_vd_error_t *err);

/* rt_vd_create_opts_t.flags */
/** Allocate every block at creation (VDI "static"; raw: reserve the space). */
#define RT_VD_CREATE_STATIC 0x00000001u

/** What to create.  Zero every field you do not set. */
typedef struct rt_vd_create_opts {
    /** sizeof(rt_vd_create_opts_t) as the caller knows it, or 0 (the same): fields past
     *  it, added by later versions, are taken as zero. */
    uint32_t struct_size;
    /** Virtual size in bytes; a multiple of 512.  0 with a backing file: the backing
     *  file's size; 0 without one: an empty disk. */
    uint64_t size;
    /** RT_VD_CREATE_* bits. */
    uint32_t flags;
    /** Allocation unit (VDI block size, QCOW2 cluster size); 0 means the format's
     *  default (VDI: 1 MiB, QCOW2: 64 KiB). */
    uint32_t block_size;
    /** Format version: QCOW2 2 (compat=0.10) or 3 (compat=1.1); 0 means the newest. */
    uint32_t version;
    /** QCOW2: the backing file, stored as given (a relative name is relative to the new
     *  image); NULL for none.  With @a size 0 the image takes the backing file's size. */
    const char *backing_file;
    /** QCOW2: the backing file's format, recorded in the image; NULL to leave it out
     *  (readers then probe it). */
    const char *backing_format;
    /** The format's own options, "name=value" strings ending with NULL (NULL: none);
     *  rt_vd_format_options() lists what each format takes. */
    const char *const *options;
} rt_vd_create_opts_t;

/** What rt_vd_measure() reports: bytes of host file a new image needs. */
typedef struct rt_vd_measure {
    /** Holding what the source holds (its data, rounded up to whole units, and all the
     *  metadata a fully allocated image would have: an overestimate, as qemu-img's). */
    uint64_t required;
    /** With every unit of the virtual size allocated. */
    uint64_t fully_allocated;
} rt_vd_measure_t;

/**
 * How large a new image of @a format would be, as `qemu-img measure` computes it:
 * for an image of @a opts->size bytes (@a source NIL), or for a copy of @a source (its
 * size rounded up to 512 bytes, and every range its chain reads as data, rounded out
 * to the new image's units; zero ranges need no space).
 *
 * @param format  "raw" or "qcow2" (others: RT_ERR_NOT_SUPPORTED, as qemu-img).
 * @param opts    the create options the new image would get (size, block_size,
 *                version, options such as refcount_bits; RT_VD_CREATE_STATIC counts
 *                every unit as required).  No backing file.
 * @param source  an open image, or RT_VD_NIL; read with rt_vd_block_status() only.
 * @param out     receives the sizes.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_POINTER, RT_ERR_VD_UNKNOWN_FORMAT, RT_ERR_NOT_SUPPORTED
 * @retval RT_ERR_INVALID_PARAMETER  an option rt_vd_create() would refuse, a backing
 *                                   file, or a size that is not a multiple of 512.
 * @retval the statuses of rt_vd_block_status() (source).
 */
int rt_vd_measure(const char *format, const rt_vd_create_opts_t *opts, rt_vd_t source,
                  rt_vd_measure_t *out, rt_vd_error_t *err);

/** One option a format takes, as rt_vd_format_options() lists them. */
typedef struct rt_vd_option {
    const char *name;  /**< "refcount_bits" */
    const char *value; /**< what it takes, in words: "1, 2, 4, 8, 16, 32 or 64" */
    const char *help;  /**< what it does */
} rt_vd_option_t;

/* rt_vd_format_options() kinds */
#define RT_VD_OPTIONS_CREATE 0 /**< for rt_vd_create_opts_t.options */
#define RT_VD_OPTIONS_OPEN   1 /**< for rt_vd_open_with() */

/**
 * The options a format takes at create or at open.
 *
 * @param format  a driver name ("qcow2").
 * @param kind    RT_VD_OPTIONS_CREATE or RT_VD_OPTIONS_OPEN.
 * @return an array ending with an entry whose name is NULL (static storage), or NULL
 *         for an unknown format or kind.  Any thread.
 */
const rt_vd_option_t *rt_vd_format_options(const char *format, int kind);

/**
 * Creates an image; it is not left open.  An existing file is not replaced.
 *
 * @param path    the file to create.
 * @param format  "raw", "vdi" or "qcow2".
 * @param opts    size and shape.
 * @param err     optional message on failure.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_POINTER    @a path, @a format or @a opts NULL.
 * @retval RT_ERR_INVALID_PARAMETER  size not a multiple of 512 or too large for the
 *                                   format; block size not a
 *                                   supported power of two; unknown flag bit; a version,
 *                                   backing file, flag or option the format does not
 *                                   have, or an option value it refuses.
 * @retval RT_ERR_VD_UNKNOWN_FORMAT  no such driver.
 * @retval RT_ERR_ALREADY_EXISTS, RT_ERR_DISK_FULL, and the statuses of rt_file_open().
 *         On failure no file is left behind.
 */
int rt_vd_create(const char *path, const char *format, const rt_vd_create_opts_t *opts,
                 rt_vd_error_t *err);

/**
 * Commits pending metadata (as rt_vd_flush() does) and closes the image.
 *
 * @param vd  the image; RT_VD_NIL is accepted and does nothing.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE  not an open image.
 * @retval RT_ERR_AIO_BUSY        asynchronous requests on the image are outstanding;
 *                                the image stays open.
 * @retval RT_ERR_IO and others   the final flush failed: the handle is freed anyway
 *                                and the last writes may not be durable.
 */
int rt_vd_close(rt_vd_t vd);

/**
 * Reads or writes guest bytes, waiting for the result.  Any offset and length inside
 * the virtual size; a length of 0 does nothing.
 *
 * A write that fails changed nothing the guest can see (a new allocation unit whose
 * data write failed is forgotten, or for VDI kept but zeroed, as it read before).
 * After a failed flush (see rt_vd_flush()) every write fails with that flush's status.
 * A write that finds the format's metadata over its budget (QCOW2: more L2 tables in
 * memory than l2-cache-size) commits it before it completes, as a flush would (and a
 * failure there fails the write and poisons the image as a failed flush does).
 *
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER (@a buf NULL with @a len > 0)
 * @retval RT_ERR_OUT_OF_RANGE    the range ends past the virtual size.
 * @retval RT_ERR_VD_READ_ONLY    a write to a read-only image.
 * @retval RT_ERR_BUSY            the image has asynchronous requests outstanding.
 * @retval RT_ERR_ACCESS_DENIED   opened with RT_VD_OPEN_NO_BACKING, and it has one.
 * @retval RT_ERR_IO, RT_ERR_DISK_FULL, RT_ERR_NO_MEMORY, RT_ERR_VD_CORRUPT (a table
 *         entry found invalid during the request).
 */
int rt_vd_read(rt_vd_t vd, uint64_t off, void *buf, size_t len);
int rt_vd_write(rt_vd_t vd, uint64_t off, const void *buf, size_t len);
/** Scatter/gather forms of rt_vd_read()/rt_vd_write(); at most 1024 pieces
 *  (RT_ERR_INVALID_PARAMETER beyond).  The same statuses. */
int rt_vd_readv(rt_vd_t vd, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt);
int rt_vd_writev(rt_vd_t vd, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt);

/* rt_vd_writev_flags() flags */
/** Forced unit access: the write is durable when it returns (or its callback runs),
 *  its data and the metadata that points at it, as if a flush had followed it alone.
 *  A write into data that is allocated and committed costs one RWF_DSYNC write, not a
 *  flush of the image; one that allocates, or into a unit whose allocation is not yet
 *  committed, runs a flush's stages before it completes. */
#define RT_VD_WRITE_FUA 0x1u

/** rt_vd_writev() with RT_VD_WRITE_* @a flags; RT_ERR_INVALID_PARAMETER for an unknown
 *  one, else the statuses of rt_vd_write() and, with RT_VD_WRITE_FUA, of rt_vd_flush():
 *  a failed commit, and a failed RWF_DSYNC write, poison the image as a failed flush
 *  does (the kernel reports a lost write-back once per file, and may report an earlier
 *  write's through this one). */
int rt_vd_writev_flags(rt_vd_t vd, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt,
                       uint32_t flags);

/* rt_vd_write_zeroes() flags */
/** The range may be deallocated instead of written (its space freed, a hole punched):
 *  it reads as zeros either way.  Without it, what was allocated stays allocated. */
#define RT_VD_ZERO_MAY_UNMAP 0x1u

/**
 * Makes guest bytes [@a off, @a off + @a len) read as zeros, waiting for the result.
 * Where the format can record zeros in its metadata (QCOW2 v3 zero clusters; a QCOW2
 * without a backing file, or raw, by deallocating with RT_VD_ZERO_MAY_UNMAP; raw by
 * FALLOC_FL_ZERO_RANGE) whole units are done that way without writing data; the rest
 * (parts of units, VDI blocks that hold data, QCOW2 v2 with a backing file) is
 * written with zeros, and what already reads as zeros is left alone.  Ordered against
 * the image's other requests as a write is; durable at the next flush, as a write is.
 * A failure may leave part of the range zeroed (the rest as it was).
 *
 * @param flags  0 or RT_VD_ZERO_MAY_UNMAP.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_PARAMETER (an unknown flag)
 * @retval RT_ERR_OUT_OF_RANGE, RT_ERR_VD_READ_ONLY, RT_ERR_BUSY, RT_ERR_ACCESS_DENIED
 *         as for rt_vd_write(); a poisoned image's status.
 * @retval RT_ERR_IO, RT_ERR_DISK_FULL (zeros that had to be written), RT_ERR_NO_MEMORY,
 *         RT_ERR_VD_CORRUPT.
 */
int rt_vd_write_zeroes(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t flags);

/**
 * Tells the image that guest bytes [@a off, @a off + @a len) are no longer needed (a
 * guest's TRIM or UNMAP), waiting for the result.  Advisory: whole units the format
 * can drop are deallocated (QCOW2 clusters, their space freed at the next flush and
 * punched out of the file; raw ranges punched) and then read as zeros; partial units,
 * VDI blocks and QCOW2 v2 with a backing file keep what they held.  Never writes
 * data, so it needs no free space.  Ordered and made durable as a write is.
 *
 * @retval the statuses of rt_vd_write_zeroes(), except RT_ERR_INVALID_PARAMETER and
 *         RT_ERR_DISK_FULL.
 */
int rt_vd_discard(rt_vd_t vd, uint64_t off, uint64_t len);

/**
 * Makes every completed write durable, together with the metadata that points at it.
 *
 * A flush whose fsync fails (or whose metadata commit fails other than for a full
 * disk) poisons the image: the kernel may have dropped the data it could not write,
 * so a later fsync would succeed over lost data.  Every later write and flush of the
 * image then fails with the same status, until it is closed and opened again; reads
 * go on working.  A commit that found the disk full wrote nothing and fails only that
 * flush: the next one tries again.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_BUSY (see rt_vd_read()), RT_ERR_IO,
 *         RT_ERR_DISK_FULL, or the status of the failure that poisoned the image.
 */
int rt_vd_flush(rt_vd_t vd);

/* rt_vd_resize() flags */
/** Allow a size smaller than the current one.  Without it a shrink fails with
 *  RT_ERR_INVALID_PARAMETER: a mistyped size must not cut a disk. */
#define RT_VD_RESIZE_SHRINK 0x1u
/** With RT_VD_RESIZE_SHRINK: drop whatever the image holds past the new end.  Without
 *  it, a shrink past data the image itself holds (allocated units; raw: ranges that
 *  are not holes) fails with RT_ERR_NOT_PERMITTED and changes nothing.  What only the
 *  backing file holds is never the image's to lose. */
#define RT_VD_RESIZE_DISCARD_DATA 0x2u

/**
 * Changes the virtual size, waiting for the result.
 *
 * Growing works on every format (VDI: as far as its block map has room, which
 * rt_vd_create() leaves for 256 GiB or more); the new range reads as zeros, even where
 * the backing file is larger or a shrink left bytes behind.  Shrinking works on raw and
 * QCOW2 (VDI cannot: its data blocks would have to move, and VirtualBox does not
 * either); the whole units past the new end are discarded and their space freed.
 *
 * Crash safety: a crash during a shrink leaves the old size (data intact, or past the
 * new end discarded) or the new one.  A crash during a grow leaves the old size, or the
 * new one, where in an overlay growing over a larger backing file the new range may
 * show the backing file's data until it is zeroed (rt_vd_write_zeroes() over it; a
 * repeated resize to the same size does nothing), as with QEMU.
 *
 * @param vd     a writable image with nothing outstanding.
 * @param size   the new virtual size: a multiple of 512 for VDI and QCOW2, any for raw.
 * @param flags  RT_VD_RESIZE_* bits.
 * @param err    optional; receives a message naming the problem on failure.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE
 * @retval RT_ERR_INVALID_PARAMETER  unknown flag; a shrink without RT_VD_RESIZE_SHRINK;
 *                                   a size the format cannot have (not a multiple of 512).
 * @retval RT_ERR_NOT_PERMITTED      the shrink would drop data (see
 *                                   RT_VD_RESIZE_DISCARD_DATA); nothing changed.
 * @retval RT_ERR_NOT_SUPPORTED      the format cannot do it: a VDI shrink, a VDI whose
 *                                   block map is full, a QCOW2 version 2 image with
 *                                   internal snapshots (as QEMU refuses).
 * @retval RT_ERR_OUT_OF_RANGE       larger than the format can describe.
 * @retval RT_ERR_VD_READ_ONLY, RT_ERR_BUSY, RT_ERR_ACCESS_DENIED as for rt_vd_write().
 * @retval RT_ERR_IO, RT_ERR_DISK_FULL, RT_ERR_NO_MEMORY, RT_ERR_VD_CORRUPT, or the
 *         status of the failure that poisoned the image (see rt_vd_flush()).
 */
int rt_vd_resize(rt_vd_t vd, uint64_t size, uint32_t flags, rt_vd_error_t *err);

/* rt_vd_rebase() flags */
/** Change only the name (qemu-img rebase -u): for a backing file that was moved or
 *  renamed, whose contents are the old one's.  What the guest reads changes if they
 *  are not. */
#define RT_VD_REBASE_UNSAFE 0x1u

/**
 * Makes the image name another backing file, or none, waiting for the result.
 *
 * Safe (the default): what the guest reads stays the same.  Wherever the image itself
 * holds nothing, what the old backing chain shows is compared with what the new backing
 * file would show, and the sectors that differ are written into the image; the data is
 * flushed before the name changes.  With @a backing NULL or "", everything the old
 * chain shows moves into the image (it becomes standalone).  The new backing file is
 * opened as the image's backing file would be (a relative name is relative to the
 * image's folder), read-only: the caller names it, which is the permission to follow
 * it.  Its format, when not given, is probed and then recorded.
 *
 * With RT_VD_REBASE_UNSAFE only the name changes; the new file need not exist (the
 * handle then reads nothing more until it is reopened: reads fail with
 * RT_ERR_ACCESS_DENIED).  This also works on a writable image opened with
 * RT_VD_OPEN_NO_BACKING, whose old backing file is gone.
 *
 * Crash safety: the copied data is durable before the name changes, and the name
 * changes with the first sector of the header written last: a crash leaves the old
 * name (with extra copies of data it already showed) or the new one.
 *
 * On success the handle follows the new chain (after a safe rebase, or an unsafe one
 * whose file could be opened).
 *
 * @param vd              a writable image with nothing outstanding (QCOW2).
 * @param backing         the new backing file's name as the image will store it; NULL or
 *                        "" for none.
 * @param backing_format  its format, recorded in the image; NULL to probe it (safe), or
 *                        to record none (unsafe).
 * @param flags           0 or RT_VD_REBASE_UNSAFE.
 * @param err             optional; receives a message naming the problem on failure.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE
 * @retval RT_ERR_INVALID_PARAMETER  an unknown flag or format; a format without a name; a
 *                                   name longer than the format stores (QCOW2: 1023).
 * @retval RT_ERR_NOT_SUPPORTED      the format has no backing files (raw, VDI).
 * @retval RT_ERR_OUT_OF_RANGE       the header's extensions and the name do not fit in
 *                                   the header cluster.
 * @retval RT_ERR_ACCESS_DENIED      a safe rebase of an image opened without its
 *                                   backing file.
 * @retval RT_ERR_FILE_NOT_FOUND, RT_ERR_VD_LOCKED (the new backing file is open for
 *         writing, e.g. the image itself), RT_ERR_VD_UNKNOWN_FORMAT, ...: a safe rebase
 *         could not open the new backing file (nothing changed).
 * @retval RT_ERR_VD_READ_ONLY, RT_ERR_BUSY, RT_ERR_IO, RT_ERR_DISK_FULL, RT_ERR_NO_MEMORY,
 *         RT_ERR_VD_CORRUPT, or the status that poisoned the image.
 */
int rt_vd_rebase(rt_vd_t vd, const char *backing, const char *backing_format, uint32_t flags,
                 rt_vd_error_t *err);

/* rt_vd_commit() flags */
/** Keep the image's data after the copy (qemu-img commit -d); by default the image is
 *  emptied, so that the backing file shows everywhere. */
#define RT_VD_COMMIT_KEEP 0x1u

/**
 * Writes everything the image holds itself into its backing file, then empties the
 * image (unless RT_VD_COMMIT_KEEP), waiting for the result: what the image reads is the
 * same before and after; what the backing file reads becomes what the image read.  A
 * backing file smaller than the image is grown to its size first.
 *
 * The backing file is reopened writable for the copy, with the format the image
 * records for it (a writable open never probes); another user of it (another overlay
 * open on it, a running guest) holds its lock and the commit is refused.  Its own
 * backing chain is followed, so a partial unit it has to fill comes from there.
 *
 * Crash safety: the copy is flushed before the image is emptied, and the emptying is a
 * single header write switching to an empty L1 table (QCOW2); a crash leaves the image
 * reading the same in every case.  Other images on the same backing file see it change
 * as the copy proceeds: that is what a commit is.
 *
 * @param vd     a writable image with nothing outstanding, opened with its backing
 *               file (RT_VD_OPEN_ALLOW_BACKING).
 * @param flags  0 or RT_VD_COMMIT_KEEP.
 * @param err    optional; receives a message naming the problem on failure.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE
 * @retval RT_ERR_INVALID_PARAMETER  an unknown flag; the image has no backing file, or
 *                                   does not record its format.
 * @retval RT_ERR_ACCESS_DENIED      the image was opened without its backing file.
 * @retval RT_ERR_NOT_SUPPORTED      the image's format cannot be emptied.
 * @retval RT_ERR_VD_LOCKED          another user holds the backing file.
 * @retval RT_ERR_VD_CORRUPT         the image's refcounts are inconsistent (emptying frees
 *                                   by count; the data is committed by then).
 * @retval RT_ERR_VD_READ_ONLY, RT_ERR_BUSY, RT_ERR_IO, RT_ERR_DISK_FULL, RT_ERR_NO_MEMORY,
 *         or the status that poisoned the image.  If the backing file cannot be reopened
 *         read-only afterwards, the call fails and the handle refuses reads until it is
 *         reopened.
 */
int rt_vd_commit(rt_vd_t vd, uint32_t flags, rt_vd_error_t *err);

/* ------------------------------------------------------------------------------------
 * Internal snapshots (QCOW2): what `qemu-img snapshot` lists, creates, applies and
 * deletes.  A snapshot keeps the disk's contents at the moment it was taken, inside the
 * image; clusters are shared by reference count until either side writes.
 */

/** The longest ID and name this API passes, in bytes without the NUL.  IDs and names an
 *  image holds that are longer are listed cut (rt_vd_snapshot_t.truncated). */
#define RT_VD_SNAPSHOT_ID_MAX   127
#define RT_VD_SNAPSHOT_NAME_MAX 255

/** One internal snapshot, as rt_vd_snapshot_list() reports it. */
typedef struct rt_vd_snapshot {
    /** Its ID (QEMU numbers them "1", "2", ... and never reuses a number in use) and
     *  its name (not unique: two snapshots may share one). */
    char id[RT_VD_SNAPSHOT_ID_MAX + 1];
    char name[RT_VD_SNAPSHOT_NAME_MAX + 1];
    /** True when the image's ID or name is longer than the fields and is cut here. */
    int truncated;
    /** When it was taken (seconds and nanoseconds since 1970, UTC). */
    uint64_t date_sec;
    uint32_t date_nsec;
    /** The guest clock at that moment, and the size of the saved VM state (0 for a disk
     *  snapshot; QEMU's savevm stores one). */
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    /** The virtual size it was taken at; 0 when the image does not record it (version 2
     *  images written by old tools). */
    uint64_t disk_size;
    /** QEMU's instruction count for record/replay; UINT64_MAX when not recorded (as
     *  QEMU writes it without record/replay, or an older entry without it). */
    uint64_t icount;
} rt_vd_snapshot_t;

/**
 * Lists the image's internal snapshots in the order the image keeps them.
 *
 * @param vd        an open image, read-only or writable, with nothing outstanding.
 * @param out       receives the first min(@a capacity, *@a count) snapshots; may be NULL
 *                  when @a capacity is 0 (to ask how many there are).
 * @param capacity  entries @a out has room for.
 * @param count     receives how many snapshots the image has (at most 65536).
 * @param err       optional; receives a message naming the problem on failure.
 * @retval RT_OK             (also when @a capacity was too small: compare *@a count).
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER (@a count, or @a out with a
 *         capacity), RT_ERR_BUSY (asynchronous requests outstanding).
 * @retval RT_ERR_NOT_SUPPORTED  the format has no internal snapshots (raw, VDI).
 * @retval RT_ERR_VD_CORRUPT     the snapshot table is malformed; RT_ERR_IO, RT_ERR_NO_MEMORY.
 * Call it from the thread that uses @a vd (as every rt_vd_* call but rt_vd_chain_path()).
 */
int rt_vd_snapshot_list(rt_vd_t vd, rt_vd_snapshot_t *out, uint32_t capacity, uint32_t *count,
                        rt_vd_error_t *err);

/**
 * Takes a snapshot of the disk as it is now, waiting for the result: every completed
 * write is in it.  The new snapshot gets the next free ID, the current time, the
 * current virtual size and no VM state; later writes to the disk leave it unchanged.
 *
 * Before anything changes, the image's reference counts are checked against its
 * metadata (as rt_vd_check() does); an image with corruptions is refused, since sharing
 * clusters whose counts are wrong would spread the damage to the snapshot.  Leaked
 * space is harmless and allowed.
 *
 * Crash safety: the new counts, the snapshot's L1 table, the cleared COPIED flags and
 * the new snapshot table are durable before one header write makes the snapshot part
 * of the image; a crash before that write leaves the image without it (with leaked
 * space at worst), after it with it.
 *
 * @param vd       a writable image with nothing outstanding.
 * @param name     1 to RT_VD_SNAPSHOT_NAME_MAX bytes; another snapshot may have it too
 *                 (as qemu-img allows).
 * @param created  optional; receives the new snapshot's description.
 * @param err      optional; receives a message naming the problem on failure.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER (@a name)
 * @retval RT_ERR_INVALID_PARAMETER  @a name empty or longer than RT_VD_SNAPSHOT_NAME_MAX.
 * @retval RT_ERR_NOT_SUPPORTED      the format has no internal snapshots.
 * @retval RT_ERR_OUT_OF_RANGE       the image already has 65536 snapshots, or its
 *                                   refcount width cannot count one more reference.
 * @retval RT_ERR_VD_CORRUPT         the image's metadata is inconsistent (the message
 *                                   gives the first problem; nothing changed).
 * @retval RT_ERR_VD_READ_ONLY, RT_ERR_BUSY, RT_ERR_IO, RT_ERR_DISK_FULL, RT_ERR_NO_MEMORY,
 *         or the status that poisoned the image (see rt_vd_flush()).  A failure after
 *         the counts were raised in the file leaves leaked space, never a damaged image.
 */
int rt_vd_snapshot_create(rt_vd_t vd, const char *name, rt_vd_snapshot_t *created,
                          rt_vd_error_t *err);

/**
 * Reverts the disk to a snapshot, waiting for the result: the disk then reads as it did
 * when the snapshot was taken, and its virtual size becomes the snapshot's.  The
 * snapshot stays (apply it again to go back to the same point), and what the disk held
 * before is dropped.  Persistent dirty bitmaps become invalid, as after any write.
 *
 * @a which is matched against IDs first, then names (as `qemu-img snapshot -a` does);
 * with several snapshots of that name, the first in the table.  The same consistency
 * check as rt_vd_snapshot_create() comes first.
 *
 * Crash safety: the references the snapshot adds are counted in the file, and the new
 * active L1 table written to new clusters, before one header write switches the disk
 * to it; a crash leaves either the old contents or the snapshot's, never a mix.  The
 * old contents' references are dropped after that write (a crash between leaks space).
 *
 * If re-reading the image's metadata after the switch fails, every later request on
 * the handle (reads and block status too) fails with that status, and it must be
 * closed; the image in the file is consistent.
 *
 * @param vd     a writable image with nothing outstanding.
 * @param which  the snapshot's ID or name.
 * @retval RT_OK
 * @retval RT_ERR_FILE_NOT_FOUND  no snapshot has that ID or name.
 * @retval the other statuses of rt_vd_snapshot_create(), except RT_ERR_INVALID_PARAMETER.
 */
int rt_vd_snapshot_apply(rt_vd_t vd, const char *which, rt_vd_error_t *err);

/**
 * Deletes a snapshot, waiting for the result; the clusters only it referenced are
 * freed (their space punched out of the file where the file system can).
 *
 * @a which is matched against names first, then IDs: `qemu-img snapshot -d` of QEMU 7.2
 * takes only names, so a script's `-d 2` meaning the snapshot named "2" deletes that
 * one, never the snapshot with ID 2.  With several of that name, the first in the table.
 *
 * Crash safety: the snapshot table without it is written to new clusters and one
 * header write makes it current; the snapshot's references are dropped after that (a
 * crash between leaks space), and COPIED flags that a count fallen to 1 allows are set
 * last.
 *
 * @retval the statuses of rt_vd_snapshot_apply().
 */
int rt_vd_snapshot_delete(rt_vd_t vd, const char *which, rt_vd_error_t *err);

/** What rt_vd_get_info() reports. */
typedef struct rt_vd_info {
    /** Driver name ("raw", "vdi"); static storage. */
    const char *format;
    /** Guest-visible size in bytes. */
    uint64_t virtual_size;
    /** Bytes the image file occupies on the host (allocated, not apparent size). */
    uint64_t file_allocated;
    /** Allocation unit in bytes (VDI block size); 0 for raw. */
    uint32_t block_size;
    /** Units with data in the image, and the total (0 and 0 for raw). */
    uint64_t blocks_allocated, blocks_total;
    /** Format variant ("dynamic", "static"), "" when the format has none. */
    char variant[16];
    /** True when open read-only. */
    int read_only;
    /** The backing file as the image names it (NULL: none), and its format as the image
     *  records it (NULL: not recorded).  Valid while @a vd is open. */
    const char *backing_file, *backing_format;
    /** True when the backing file was not opened (RT_VD_OPEN_NO_BACKING). */
    int backing_unopened;
    /** RT_VD_INFO_* bits: the state and features the image's header records. */
    uint32_t flags;
    /** QCOW2: the width of a reference count in bits; 0 for other formats. */
    uint32_t refcount_bits;
    /** QCOW2: how compressed clusters are stored ("zlib"); "" for other formats. */
    char compression[8];
} rt_vd_info_t;

/* rt_vd_info_t.flags */
/** The image is marked dirty: its metadata may not all be written (QCOW2 with lazy
 *  refcounts after a crash; such an image opens read-only only). */
#define RT_VD_INFO_DIRTY 0x1u
/** The image is marked corrupt (QCOW2: a writer found an inconsistency). */
#define RT_VD_INFO_CORRUPT 0x2u
/** QCOW2: lazy refcounts are on (compatible feature bit 0). */
#define RT_VD_INFO_LAZY_REFCOUNTS 0x4u

/**
 * Describes an open image.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER, RT_ERR_IO.
 */
int rt_vd_get_info(rt_vd_t vd, rt_vd_info_t *info);

/**
 * The file of the image at @a depth in @a vd's backing chain, as rt_vd_extent_t.depth
 * counts it: 0 is @a vd's own (the path it was opened with), 1 its backing file (the
 * name the image gives, resolved against the image's folder), and so on.
 *
 * @return the path, valid while @a vd is open; NULL past the end of the chain (or when
 *         the backing file was not opened), or for an invalid handle.
 * Any thread may call it while @a vd is open.
 */
const char *rt_vd_chain_path(rt_vd_t vd, uint32_t depth);

/* rt_vd_extent_t.flags */
/** The range holds data stored in the image file. */
#define RT_VD_EXTENT_DATA 0x1u
/** The range reads as zeros. */
#define RT_VD_EXTENT_ZERO 0x2u
/** The image itself describes the range (allocated, or a zero block recorded in the
 *  map); clear for ranges the image leaves unallocated. */
#define RT_VD_EXTENT_ALLOCATED 0x4u

/** The data is stored compressed (host_offset is then UINT64_MAX). */
#define RT_VD_EXTENT_COMPRESSED 0x8u

/** A run of the virtual disk with one status. */
typedef struct rt_vd_extent {
    uint64_t offset, length;
    uint32_t flags;
    /** Which image of the backing chain answers: 0 this one, 1 its backing file, ...
     *  For an unallocated range it is the depth where the search ended. */
    uint32_t depth;
    /** Where the data starts in the image file; UINT64_MAX when not DATA. */
    uint64_t host_offset;
} rt_vd_extent_t;

/**
 * The status of the longest run starting at @a off, at most @a len bytes long.
 *
 * @param vd   the image.
 * @param off  inside the virtual size.
 * @param len  the longest run wanted; clipped to the virtual size.
 * @param ext  receives offset (= @a off), length (> 0), flags and host offset.
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER, RT_ERR_OUT_OF_RANGE
 *         (@a off at or past the virtual size, or @a len 0), RT_ERR_IO,
 *         RT_ERR_ACCESS_DENIED (opened with RT_VD_OPEN_NO_BACKING, and it has one).
 */
int rt_vd_block_status(rt_vd_t vd, uint64_t off, uint64_t len, rt_vd_extent_t *ext);

/**
 * Writes one whole allocation unit compressed (QCOW2 with zlib), for building
 * compressed images; a unit that does not shrink is written plainly.  The last unit of
 * a disk whose size is not a multiple of the unit is passed with its real length.
 *
 * @param vd   a writable image with nothing outstanding.
 * @param off  a multiple of the unit size (rt_vd_info_t.block_size).
 * @param buf  the unit's bytes.
 * @param len  the unit size, or what is left of the disk at @a off.
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER, RT_ERR_VD_READ_ONLY,
 *         RT_ERR_BUSY, RT_ERR_OUT_OF_RANGE (past the virtual size),
 *         RT_ERR_INVALID_PARAMETER (@a off or @a len not a whole unit),
 *         RT_ERR_NOT_SUPPORTED (the format has no compression), RT_ERR_IO,
 *         RT_ERR_NO_MEMORY.
 */
int rt_vd_write_compressed(rt_vd_t vd, uint64_t off, const void *buf, size_t len);

/* rt_vd_check() flags */
/** Reclaim leaked space (space the image holds that nothing references). */
#define RT_VD_CHECK_REPAIR_LEAKS 0x1u

/** What rt_vd_check() found. */
typedef struct rt_vd_check_result {
    /** Inconsistencies that can lose or expose data. */
    uint64_t corruptions;
    /** Space held but unreferenced (harmless; what a crash during allocation leaves). */
    uint64_t leaks;
    /** Leaks the repair reclaimed. */
    uint64_t leaks_fixed;
    /** Allocated and total units, as in rt_vd_info_t. */
    uint64_t blocks_allocated, blocks_total;
    /** Of the allocated units: compressed ones, and fragmented ones (not right after
     *  the previous unit of the same table in the file; every compressed unit is), as
     *  qemu-img check counts them.  0 where the format does not measure them. */
    uint64_t blocks_compressed, blocks_fragmented;
    /** Where the image's used part of the file ends (after the last cluster with a
     *  stored or found reference); 0 where the format does not measure it. */
    uint64_t image_end_offset;
    /** The first problem found, in words; empty when clean. */
    char first_problem[256];
    /** Why RT_VD_CHECK_REPAIR_LEAKS reclaimed nothing although leaks were found: the
     *  check also found corruptions (the references it counted may be incomplete), or
     *  the image holds a structure this library does not know (it may own the clusters
     *  that look leaked).  Empty when the repair ran or was not asked for. */
    char repair_refused[160];
} rt_vd_check_result_t;

/**
 * Checks the image's metadata for consistency.  Repairing needs a writable image.  A
 * repair reclaims leaks only when it is safe: with corruptions found, or a structure the
 * library does not know in the image, it changes nothing and says why in
 * @a res->repair_refused (the call still returns RT_OK: the check ran).
 *
 * @retval RT_OK  the check ran (read @a res for what it found).
 * @retval RT_ERR_NOT_SUPPORTED  the format has nothing to check (raw).
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER, RT_ERR_INVALID_PARAMETER (an
 *         unknown flag), RT_ERR_VD_READ_ONLY (repair asked on a read-only image),
 *         RT_ERR_BUSY (asynchronous requests outstanding), RT_ERR_IO.
 */
int rt_vd_check(rt_vd_t vd, uint32_t flags, rt_vd_check_result_t *res);

/* ------------------------------------------------------------------------------------
 * Asynchronous requests.
 *
 * A queue owns an rt_aio context.  Requests are accepted without limit (beyond memory):
 * those that do not fit the context wait inside the queue.  rt_vd_queue_run() waits for
 * I/O, advances requests (a read of an unallocated block, an allocating write, a
 * read-modify-write of a partial sector) and calls each completion callback, on the
 * thread that runs the queue.  A hypervisor's I/O thread typically keeps hundreds of
 * requests across several images on one queue and calls run in its loop.
 * ----------------------------------------------------------------------------------*/

/** Completion callback: @a status is what the synchronous call would have returned. */
typedef void rt_vd_done_t(void *user, int status);

/**
 * Creates a queue.
 *
 * @param queue  receives the handle.
 * @param depth  kernel requests in flight at most (1..4096); 0 means 128.
 * @retval RT_OK, RT_ERR_INVALID_POINTER, RT_ERR_INVALID_PARAMETER, RT_ERR_NO_MEMORY,
 *         and the statuses of rt_aio_ctx_create().
 */
int rt_vd_queue_create(rt_vd_queue_t *queue, uint32_t depth);

/**
 * Destroys an idle queue.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE (RT_VD_QUEUE_NIL is accepted and does nothing),
 *         RT_ERR_AIO_BUSY (requests outstanding, or called from one of its callbacks;
 *         the queue stays).
 */
int rt_vd_queue_destroy(rt_vd_queue_t queue);

/**
 * Starts a read, write or flush.  The buffers must stay valid until the callback; the
 * @a iov array itself is copied.  The callback never runs inside these calls.
 *
 * @retval RT_OK  accepted; @a done will be called exactly once from rt_vd_queue_run().
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER (@a done NULL, @a iov NULL with
 *         @a iovcnt > 0), RT_ERR_INVALID_PARAMETER (more than 1024 pieces),
 *         RT_ERR_OUT_OF_RANGE, RT_ERR_VD_READ_ONLY, RT_ERR_NO_MEMORY,
 *         RT_ERR_BUSY (the image has requests outstanding on another queue).
 *         On failure nothing was started and @a done will not be called.
 */
int rt_vd_queue_read(rt_vd_queue_t queue, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                     unsigned iovcnt, rt_vd_done_t *done, void *user);
int rt_vd_queue_write(rt_vd_queue_t queue, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                      unsigned iovcnt, rt_vd_done_t *done, void *user);
/** rt_vd_queue_write() with RT_VD_WRITE_* @a flags (RT_ERR_INVALID_PARAMETER for an
 *  unknown one); with RT_VD_WRITE_FUA the callback runs once the write is durable, as
 *  rt_vd_writev_flags() describes. */
int rt_vd_queue_write_flags(rt_vd_queue_t queue, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                            unsigned iovcnt, uint32_t flags, rt_vd_done_t *done, void *user);
/** Queued forms of rt_vd_write_zeroes() and rt_vd_discard(): accepted or refused as
 *  rt_vd_queue_write() is (RT_ERR_INVALID_PARAMETER for an unknown flag), completed
 *  with the statuses of the synchronous calls.  Ordered against the image's other
 *  requests on the queue as a write over the same range is. */
int rt_vd_queue_write_zeroes(rt_vd_queue_t queue, rt_vd_t vd, uint64_t off, uint64_t len,
                             uint32_t flags, rt_vd_done_t *done, void *user);
int rt_vd_queue_discard(rt_vd_queue_t queue, rt_vd_t vd, uint64_t off, uint64_t len,
                        rt_vd_done_t *done, void *user);
/** A flush covers every write whose callback ran before the flush was started; the
 *  poisoning rule of rt_vd_flush() applies (a poisoned image refuses writes and flushes
 *  here at once, with its status). */
int rt_vd_queue_flush(rt_vd_queue_t queue, rt_vd_t vd, rt_vd_done_t *done, void *user);

/**
 * Runs the queue: waits until at least @a min requests have completed (their callbacks
 * have run) or @a timeout_ms passes, whichever is first.
 *
 * @param queue       the queue.
 * @param min         completions to wait for; 0 only runs what is ready.
 * @param timeout_ms  milliseconds, or RT_INDEFINITE_WAIT.
 * @param completed   optional; receives the number of callbacks that ran.
 * @retval RT_OK              at least @a min callbacks ran.
 * @retval RT_ERR_TIMEOUT     the time ran out first (some callbacks may have run).
 * @retval RT_ERR_INTERRUPTED rt_vd_queue_wakeup() was called.
 * @retval RT_ERR_AIO_NO_REQUEST  nothing is outstanding and @a min > 0.
 * @retval RT_ERR_AIO_BUSY    called from a callback of this queue (runs do not nest).
 * @retval RT_ERR_INVALID_HANDLE, and the statuses of rt_aio_ctx_wait().
 * Callbacks may start new requests on any queue, and close an image whose last request
 * they complete; they may not run or destroy the queue that calls them.
 */
int rt_vd_queue_run(rt_vd_queue_t queue, uint32_t min, uint32_t timeout_ms, uint32_t *completed);

/**
 * Makes a running (or the next) rt_vd_queue_run() return RT_ERR_INTERRUPTED.  Any thread.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE.
 */
int rt_vd_queue_wakeup(rt_vd_queue_t queue);

/**
 * The names of the drivers, in probe order, NULL-terminated.  Static storage.
 */
const char *const *rt_vd_formats(void);

#ifdef __cplusplus
}
#endif

#endif /* RT_VD_H */
