/*
 * vrt-img convert: copies the guest contents of one image into a new image, of the
 * same or another format, leaving the destination sparse where the source reads as
 * zeros.
 *
 * The pipeline
 * ------------
 * The source is walked in order.  rt_vd_block_status says which runs read as zeros;
 * those are skipped outright, since a freshly created destination already reads zeros
 * there.  Every other run is cut into pieces of at most one chunk (1 MiB, aligned to
 * the chunk grid) and copied by a fixed set of slots, each owning one chunk buffer:
 *
 *     FREE --queue_read--> READING --callback--> READ_DONE --scan--> WRITING --+
 *      ^                                                  (all zero)  |        |
 *      +------------------------------------------------------------+--------+
 *                                                           last write's callback
 *
 * Scanning cuts the piece along the -S grid (4 KiB by default) and writes only the
 * runs that are not all zeros, one rt_vd_queue_write per run, so a data block the guest
 * zeroed stays unallocated in the copy.  All slots share one rt_vd_queue, so up to
 * SLOT_COUNT reads and writes are in flight at once.  Callbacks only record what
 * happened; the decisions (scan, write, free) are taken after rt_vd_queue_run returns,
 * on the same thread, so no request is ever started from inside a callback.
 *
 * Compression (-c) writes whole destination clusters with rt_vd_write_compressed,
 * which takes one cluster at a time and no other request on the destination, so then
 * pieces start and end on the cluster grid (a zero run is skipped only in whole
 * clusters; a cluster that is partly zero is read whole) and each cluster that is not
 * all zeros is written synchronously, right where the scan would queue its writes.
 * Reads still overlap through the queue; the writes go in whatever order pieces
 * finish, which a format that appends compressed clusters does not mind.
 *
 * With -n the destination exists: it is opened, zeroed (unless --target-is-zero: then
 * the caller says it reads as zeros already) so that zero runs can be skipped as for a
 * new one, and written in place; nothing is renamed and an interrupted copy stays.
 *
 * Otherwise the copy is made under a temporary name beside DST (".DST.vrt-XXXXXX") and
 * renamed to DST only after its final flush, without replacing a file that appeared there
 * meanwhile: DST never holds a partial copy that looks finished, whatever stops the
 * convert (a partial copy that looks like a good image is worse than none).  On any
 * failure, or SIGINT/SIGTERM, no new piece starts, everything in flight is drained,
 * and the temporary file is removed; only a SIGKILL or a power loss leaves it.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rt/err.h>
#include <rt/mem.h>
#include <rt/vd.h>

#include "cli_common.h"
#include "img.h"

#define CHUNK_SIZE     (1u << 20)
#define SLOT_COUNT     16u
#define QUEUE_DEPTH    64u
#define SPARSE_DEFAULT 4096u
#define SPARSE_MAX     (16u << 20) /* qemu-img's limit */
#define RUN_SLICE_MS   200u

static const char usage_text[] =
    "Usage: " PROG " convert [-f FMT] [-O FMT] [-o OPTIONS] [-c] [-p] [-q] [-S SIZE]\n"
    "                        [-t CACHE] [-T CACHE] [-m N] [-W] [-U]\n"
    "                        [-n [--target-is-zero]] SRC DST\n"
    "Copy the guest contents of image SRC into a new image DST (or, with -n, into the\n"
    "existing image DST).\n"
    "\n"
    "  -f FMT      SRC's format; default: probe it (a SRC with a backing file needs -f)\n"
    "  -O FMT      DST's format, raw (default), vdi or qcow2\n"
    "  -o OPTIONS  DST's create options, as for create ('-o help' lists them), except\n"
    "              backing_file and backing_fmt: DST is a complete copy\n"
    "  -c          compress DST's clusters (formats with compression: qcow2)\n"
    "  -p          show progress (the default when stdout is a terminal)\n"
    "  -q          quiet: no progress\n"
    "  -t CACHE    DST's cache mode: none or directsync bypass the host page cache;\n"
    "              writeback (default), writethrough, unsafe use it (DST is flushed\n"
    "              before it is published, whatever the mode)\n"
    "  -T CACHE    SRC's cache mode, the same names\n"
    "  -m N        requests in flight at once, 1 to 16 (default 16)\n"
    "  -W          accepted: writes already complete in any order\n"
    "  -U, --force-share  read SRC even while another process (a running guest) has it\n"
    "                     open for writing, without taking its lock\n"
    "  -S SIZE     sparse detection granularity: runs of SIZE zero bytes, aligned to\n"
    "              SIZE, are not written (default 4k; a multiple of 512 up to 16M);\n"
    "              -S 0 writes everything, so DST comes out fully allocated; with -c\n"
    "              zeros are skipped in whole clusters of DST, whatever SIZE (unless 0)\n"
    "  -n          DST exists (its format is -O's): it is made to read as zeros, then\n"
    "              written in place; it must be at least as large as SRC\n"
    "      --target-is-zero  with -n: DST already reads as zeros; it is not zeroed first\n"
    "  -h, --help  print this text and exit\n"
    "\n"
    "Without -n, DST must not exist.  The copy is made under a temporary name beside DST\n"
    "(.DST.vrt-XXXXXX) and renamed to DST only when complete and flushed; if it fails\n"
    "or is interrupted the temporary file is removed and DST never appears.  With -n\n"
    "the copy is made in place: an interrupted one leaves DST partly written.\n";

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_READ_DONE, SLOT_WRITING };

struct copy;

struct slot {
    struct copy *copy;
    unsigned char *buf;
    uint64_t off;
    size_t len;
    enum slot_state state;
    unsigned writes_pending;
    int status; /* of the read, or the first failed write */
};

struct copy {
    const char *src_path, *dst_path;
    /* Where the copy is made: a temporary name beside dst_path, renamed to it only
     * once the copy is complete and durable, so dst_path never holds a partial copy
     * that looks finished (a convert killed by SIGKILL or a power loss leaves the
     * temporary file, named as such). */
    char *tmp_path;
    rt_vd_t src, dst;
    rt_vd_queue_t queue;
    uint64_t size;     /* the source's virtual size */
    uint64_t dst_size; /* the destination's: size rounded up to a sector */
    uint64_t sparse;   /* -S; 0: write everything */
    size_t chunk;
    bool compress; /* -c */
    bool existing; /* -n: DST exists and is written in place */
    bool target_is_zero; /* --target-is-zero: with -n, DST already reads as zeros */
    uint64_t unit; /* pieces start and end on this grid: a cluster with -c, else 1 */

    uint64_t cursor; /* the first byte no piece covers yet */
    rt_vd_extent_t ext;
    bool ext_valid;

    struct slot slots[SLOT_COUNT];
    unsigned slot_count; /* in use: -m, at most SLOT_COUNT */
    uint32_t src_flags, dst_flags; /* -T, -t: RT_VD_OPEN_NO_CACHE or 0 */
    void *buffers;
    size_t buffers_size;
    unsigned busy; /* slots not FREE */

    uint64_t done; /* bytes finished, for progress */
    struct cli_progress progress;
    int status; /* the first failure */
};

/* Records the first failure, naming what failed; later ones are consequences. */
static void fail(struct copy *c, int rc, const char *op, const char *path, uint64_t off)
{
    char what[IMG_WHAT_MAX];

    if (RT_FAILURE(c->status))
        return;
    c->status = rc;
    cli_progress_end(&c->progress, false);
    c->progress.enabled = false;
    snprintf(what, sizeof(what), "%s '%s' at offset %" PRIu64, op, path, off);
    img_report(what, rc, NULL);
}

static void read_done(void *user, int status)
{
    struct slot *s = user;

    s->status = status;
    s->state = SLOT_READ_DONE;
}

static void finish_slot(struct slot *s)
{
    s->copy->done += s->len;
    s->state = SLOT_FREE;
    s->copy->busy--;
}

static void write_done(void *user, int status)
{
    struct slot *s = user;

    if (RT_FAILURE(status) && RT_SUCCESS(s->status))
        s->status = status;
    if (--s->writes_pending == 0) {
        if (RT_FAILURE(s->status))
            fail(s->copy, s->status, "writing", s->copy->dst_path, s->off);
        finish_slot(s);
    }
}

static uint64_t round_up(uint64_t value, uint64_t unit)
{
    return (value + unit - 1) / unit * unit;
}

/*
 * The next piece to copy, skipping what reads as zeros.  The cursor stays on the
 * c->unit grid, and a piece ends on it (or at the end of the source).  Returns false
 * when the source is exhausted or block status failed.
 */
static bool next_piece(struct copy *c, uint64_t *off, size_t *len)
{
    while (c->cursor < c->size) {
        uint64_t chunk_end = (c->cursor / c->chunk + 1) * c->chunk;
        uint64_t end = chunk_end < c->size ? chunk_end : c->size;

        if (c->sparse) {
            uint64_t ext_end, skip_to;

            if (!c->ext_valid || c->cursor >= c->ext.offset + c->ext.length) {
                int rc = rt_vd_block_status(c->src, c->cursor, c->size - c->cursor, &c->ext);

                if (RT_FAILURE(rc)) {
                    fail(c, rc, "reading the allocation map of", c->src_path, c->cursor);
                    return false;
                }
                c->ext_valid = true;
            }
            ext_end = c->ext.offset + c->ext.length;
            if (c->ext.flags & RT_VD_EXTENT_ZERO) {
                /* Skip the whole units the run covers; a run ending inside the
                 * cursor's unit is read with the rest of that unit. */
                skip_to = ext_end >= c->size ? c->size : ext_end / c->unit * c->unit;
                if (skip_to > c->cursor) {
                    c->done += skip_to - c->cursor;
                    c->cursor = skip_to;
                    continue;
                }
            }
            if (round_up(ext_end, c->unit) < end)
                end = round_up(ext_end, c->unit);
        }
        *off = c->cursor;
        *len = (size_t)(end - c->cursor);
        c->cursor = end;
        return true;
    }
    return false;
}

static void start_reads(struct copy *c)
{
    for (unsigned i = 0; i < c->slot_count && RT_SUCCESS(c->status); i++) {
        struct slot *s = &c->slots[i];
        rt_iovec_t iov;
        int rc;

        if (s->state != SLOT_FREE)
            continue;
        if (!next_piece(c, &s->off, &s->len))
            return;
        iov.base = s->buf;
        iov.len = s->len;
        s->status = RT_OK;
        rc = rt_vd_queue_read(c->queue, c->src, s->off, &iov, 1, read_done, s);
        if (RT_FAILURE(rc)) {
            fail(c, rc, "reading", c->src_path, s->off);
            return;
        }
        s->state = SLOT_READING;
        c->busy++;
    }
}

static void write_run(struct copy *c, struct slot *s, uint64_t off, uint64_t end)
{
    rt_iovec_t iov = {s->buf + (off - s->off), (size_t)(end - off)};
    int rc;

    if (RT_FAILURE(c->status))
        return;
    rc = rt_vd_queue_write(c->queue, c->dst, off, &iov, 1, write_done, s);
    if (RT_FAILURE(rc)) {
        fail(c, rc, "writing", c->dst_path, off);
        return;
    }
    s->writes_pending++;
}

/*
 * -c: writes the piece's clusters compressed, one synchronous call each, skipping those
 * that are all zeros (unless -S 0).  The last cluster of the disk has its real length;
 * bytes the destination has past the source's end (it is rounded up to a sector) are
 * zeros.
 */
static void write_compressed(struct copy *c, struct slot *s)
{
    uint64_t end = s->off + s->len;

    for (uint64_t pos = s->off; pos < end && RT_SUCCESS(c->status); pos += c->unit) {
        unsigned char *data = s->buf + (pos - s->off);
        uint64_t len = c->dst_size - pos < c->unit ? c->dst_size - pos : c->unit;
        uint64_t have = end - pos < len ? end - pos : len;
        int rc;

        if (have < len)
            memset(data + have, 0, (size_t)(len - have));
        if (c->sparse && img_is_zero(data, (size_t)len))
            continue;
        rc = rt_vd_write_compressed(c->dst, pos, data, (size_t)len);
        if (RT_FAILURE(rc))
            fail(c, rc, "writing a compressed cluster of", c->dst_path, pos);
    }
}

/* A piece has been read: write its non-zero runs (all of it without -S). */
static void write_piece(struct copy *c, struct slot *s)
{
    uint64_t end = s->off + s->len;
    uint64_t run = UINT64_MAX; /* start of the pending non-zero run */

    s->state = SLOT_WRITING;
    if (c->compress) {
        write_compressed(c, s);
    } else if (!c->sparse) {
        write_run(c, s, s->off, end);
    } else {
        for (uint64_t pos = s->off; pos < end;) {
            uint64_t cell_end = (pos / c->sparse + 1) * c->sparse;

            if (cell_end > end)
                cell_end = end;
            if (!img_is_zero(s->buf + (pos - s->off), (size_t)(cell_end - pos))) {
                if (run == UINT64_MAX)
                    run = pos;
            } else if (run != UINT64_MAX) {
                write_run(c, s, run, pos);
                run = UINT64_MAX;
            }
            pos = cell_end;
        }
        if (run != UINT64_MAX)
            write_run(c, s, run, end);
    }
    if (s->writes_pending == 0)
        finish_slot(s);
}

static void handle_reads(struct copy *c)
{
    for (unsigned i = 0; i < c->slot_count; i++) {
        struct slot *s = &c->slots[i];

        if (s->state != SLOT_READ_DONE)
            continue;
        if (RT_FAILURE(s->status)) {
            fail(c, s->status, "reading", c->src_path, s->off);
            finish_slot(s);
        } else if (RT_FAILURE(c->status)) {
            finish_slot(s); /* stopping: do not write what is left */
        } else {
            write_piece(c, s);
        }
    }
}

/* Runs the pipeline to the end.  Returns false when the queue itself failed, so that
 * requests may still be in flight and the images must not be closed. */
static bool run_pipeline(struct copy *c)
{
    for (;;) {
        int rc;

        if (img_stop_requested() && RT_SUCCESS(c->status)) {
            c->status = RT_ERR_INTERRUPTED;
            cli_progress_end(&c->progress, false);
            c->progress.enabled = false;
            fprintf(stderr, "%s: interrupted\n", PROG);
        }
        if (RT_SUCCESS(c->status))
            start_reads(c);
        if (c->busy == 0)
            return true;
        rc = rt_vd_queue_run(c->queue, 1, RUN_SLICE_MS, NULL);
        if (RT_FAILURE(rc) && rc != RT_ERR_TIMEOUT && rc != RT_ERR_INTERRUPTED) {
            fail(c, rc, "waiting for I/O on", c->dst_path, c->cursor);
            return false;
        }
        handle_reads(c);
        cli_progress_update(&c->progress, c->done, c->size);
    }
}

/* The queue and the slots' buffers, once the chunk size is known. */
static int setup(struct copy *c)
{
    int rc = rt_vd_queue_create(&c->queue, QUEUE_DEPTH);

    if (RT_FAILURE(rc)) {
        img_report("creating an I/O queue", rc, NULL);
        return rc;
    }
    c->buffers_size = (size_t)c->slot_count * c->chunk;
    c->buffers = rt_mem_page_alloc(c->buffers_size);
    if (!c->buffers) {
        img_report("allocating copy buffers", RT_ERR_NO_MEMORY, NULL);
        return RT_ERR_NO_MEMORY;
    }
    for (unsigned i = 0; i < c->slot_count; i++) {
        c->slots[i].copy = c;
        c->slots[i].buf = (unsigned char *)c->buffers + (size_t)i * c->chunk;
    }
    return RT_OK;
}

/* Creates and opens the destination, as big as the source (rounded up to a sector). */
static int create_destination(struct copy *c, const char *format, rt_vd_create_opts_t *opts)
{
    rt_vd_error_t err = {{0}};
    char what[IMG_WHAT_MAX];
    int rc;

    opts->size = (c->size + IMG_SECTOR - 1) / IMG_SECTOR * IMG_SECTOR;
    c->dst_size = opts->size;
    snprintf(what, sizeof(what), "creating '%s'", c->dst_path);
    if (access(c->dst_path, F_OK) == 0) {
        img_report(what, RT_ERR_ALREADY_EXISTS, NULL);
        fprintf(stderr, "  (convert never overwrites; remove it first)\n");
        return RT_ERR_ALREADY_EXISTS;
    }
    c->tmp_path = img_temp_beside(c->dst_path);
    if (c->tmp_path == NULL) {
        img_report(what, rt_err_from_errno(errno), NULL);
        return RT_ERR_NO_MEMORY;
    }
    rc = rt_vd_create(c->tmp_path, format, opts, &err);
    if (RT_FAILURE(rc)) {
        img_report(what, rc, &err);
        return rc;
    }
    rc = img_open(&c->dst, c->tmp_path, format, c->dst_flags, NULL);
    if (RT_FAILURE(rc))
        unlink(c->tmp_path);
    return rc;
}

/* -n: opens the existing destination, which must be at least as large as the source,
 * and (unless --target-is-zero) makes it read as zeros first, as a new one would, so
 * that the copy can skip what the source reads as zeros. */
static int open_existing(struct copy *c, const char *format)
{
    rt_vd_info_t info;
    int rc = img_open_info(&c->dst, c->dst_path, format, c->dst_flags, &info);
    if (RT_FAILURE(rc))
        return rc;
    c->dst_size = info.virtual_size;
    if (info.virtual_size < c->size) {
        fprintf(stderr, "%s: '%s' (%" PRIu64 " bytes) is smaller than '%s' (%" PRIu64 " bytes)\n",
                PROG, c->dst_path, info.virtual_size, c->src_path, c->size);
        rc = RT_ERR_OUT_OF_RANGE;
    } else if (!c->target_is_zero &&
               RT_FAILURE(
                   rc = rt_vd_write_zeroes(c->dst, 0, info.virtual_size, RT_VD_ZERO_MAY_UNMAP))) {
        char what[IMG_WHAT_MAX];
        snprintf(what, sizeof(what), "zeroing '%s' before the copy", c->dst_path);
        img_report(what, rc, NULL);
    }
    if (RT_FAILURE(rc)) {
        rt_vd_close(c->dst);
        c->dst = RT_VD_NIL;
    }
    return rc;
}

/* -c: pieces follow the destination's clusters; the chunk holds whole clusters. */
static int use_clusters(struct copy *c, const char *format)
{
    rt_vd_info_t info;
    int rc = rt_vd_get_info(c->dst, &info);

    if (RT_FAILURE(rc)) {
        img_report("reading the information of the new image", rc, NULL);
        return rc;
    }
    if (info.block_size == 0) {
        fprintf(stderr, "%s: -c: the %s format has no clusters to compress\n", PROG, format);
        return RT_ERR_NOT_SUPPORTED;
    }
    c->unit = info.block_size;
    if (c->chunk < c->unit)
        c->chunk = (size_t)c->unit;
    c->chunk = (size_t)round_up(c->chunk, c->unit);
    return RT_OK;
}

/* Copies; on failure removes the destination.  Returns the exit status. */
static int convert(struct copy *c, const char *src_format, const char *dst_format,
                   rt_vd_create_opts_t *opts, bool progress)
{
    rt_vd_info_t info;
    bool idle = true;
    int rc;

    rc = img_open_info(&c->src, c->src_path, src_format, RT_VD_OPEN_READ_ONLY | c->src_flags,
                       &info);
    if (RT_FAILURE(rc))
        return IMG_EXIT_ERROR;
    c->size = info.virtual_size;
    rc = c->existing ? open_existing(c, dst_format) : create_destination(c, dst_format, opts);
    if (RT_FAILURE(rc))
        goto out;
    if (c->compress)
        rc = use_clusters(c, dst_format);
    if (RT_SUCCESS(rc))
        rc = setup(c);
    if (RT_FAILURE(rc)) {
        rt_vd_close(c->dst);
        if (c->tmp_path != NULL)
            unlink(c->tmp_path);
        goto out;
    }

    img_install_stop_handler();
    cli_progress_start_qemu(&c->progress, progress);
    cli_progress_update(&c->progress, 0, c->size);
    idle = run_pipeline(c);
    if (RT_SUCCESS(c->status)) {
        rc = rt_vd_flush(c->dst);
        if (RT_FAILURE(rc))
            fail(c, rc, "flushing", c->dst_path, 0);
    }
    /* Not idle: requests may be in flight, so the handles and buffers must stay; the
     * process exit ends them. */
    if (idle) {
        rc = img_close(c->dst, c->dst_path);
        if (RT_FAILURE(rc) && RT_SUCCESS(c->status))
            c->status = rc;
    }
    if (RT_SUCCESS(c->status) && idle && c->tmp_path != NULL) {
        int error = img_publish(c->tmp_path, c->dst_path, false);
        if (error != 0) {
            char what[IMG_WHAT_MAX];
            snprintf(what, sizeof(what), "putting the copy in place at '%s'", c->dst_path);
            c->status = rt_err_from_errno(error);
            cli_progress_end(&c->progress, false);
            c->progress.enabled = false;
            img_report(what, c->status, NULL);
        }
    }
    if (RT_FAILURE(c->status) && c->tmp_path != NULL)
        unlink(c->tmp_path);
    else if (RT_SUCCESS(c->status))
        cli_progress_end(&c->progress, true);
    rc = c->status;
out:
    free(c->tmp_path);
    c->tmp_path = NULL;
    if (idle) {
        rt_vd_queue_destroy(c->queue);
        rt_vd_close(c->src);
        rt_mem_page_free(c->buffers, c->buffers_size);
    }
    return RT_FAILURE(rc) ? IMG_EXIT_ERROR : IMG_EXIT_OK;
}

enum { OPT_TARGET_IS_ZERO = OPT_HELP + 1 };

static const struct option long_options[] = {
    {"help", no_argument, NULL, 'h'},
    {"force-share", no_argument, NULL, 'U'},
    {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
    {NULL, 0, NULL, 0},
};

/* qemu-img's cache modes: "none" and "directsync" bypass the host page cache (the
 * copy is flushed before it is published either way); the others use it. */
static bool parse_cache_mode(const char *cmd, int option, const char *mode, uint32_t *flags)
{
    static const char *const cached[] = {"writeback", "writethrough", "unsafe"};
    if (!strcmp(mode, "none") || !strcmp(mode, "directsync")) {
        *flags = RT_VD_OPEN_NO_CACHE;
        return true;
    }
    for (size_t i = 0; i < sizeof cached / sizeof cached[0]; i++) {
        if (!strcmp(mode, cached[i])) {
            *flags = 0;
            return true;
        }
    }
    img_usage_error(cmd, "-%c: '%s' is not a cache mode (none, directsync, writeback, "
                         "writethrough, unsafe)",
                    option, mode);
    return false;
}

/* Everything but freeing the names in @a opts; returns the exit status. */
static int parse_and_convert(int argc, char **argv, rt_vd_create_opts_t *opts)
{
    static struct copy copy; /* slots and all: off the stack */
    const char *cmd = argv[0], *src_format = NULL, *dst_format = "raw";
    bool help = false, quiet = false, progress = isatty(STDOUT_FILENO);
    int c;

    copy.sparse = SPARSE_DEFAULT;
    copy.unit = 1;
    copy.slot_count = SLOT_COUNT;
    opterr = 0;
    bool have_options = false;
    while ((c = getopt_long(argc, argv, ":f:O:o:cpqS:t:T:m:WUnh", long_options, NULL)) != -1) {
        switch (c) {
        case 'n': copy.existing = true; break;
        case OPT_TARGET_IS_ZERO: copy.target_is_zero = true; break;
        case 't':
        case 'T':
            if (!parse_cache_mode(cmd, c, optarg, c == 't' ? &copy.dst_flags : &copy.src_flags))
                return IMG_EXIT_ERROR;
            break;
        case 'm': {
            uint64_t n;
            if (!cli_parse_u64(optarg, &n) || n < 1 || n > SLOT_COUNT) {
                img_usage_error(cmd, "-m: '%s' is not a number of requests from 1 to %u",
                                optarg, SLOT_COUNT);
                return IMG_EXIT_ERROR;
            }
            copy.slot_count = (unsigned)n;
            break;
        }
        case 'W': break; /* writes already complete in any order */
        case 'U': img_force_share = true; break; /* the sources only: they open read-only */
        case 'c': copy.compress = true; break;
        case 'f': src_format = optarg; break;
        case 'O': dst_format = optarg; break;
        case 'o':
            if (!img_parse_create_options(cmd, optarg, opts, &help))
                return IMG_EXIT_ERROR;
            have_options = true;
            break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 'S':
            if (!img_parse_size_option(cmd, "-S", optarg, &copy.sparse))
                return IMG_EXIT_ERROR;
            if (copy.sparse % IMG_SECTOR || copy.sparse > SPARSE_MAX) {
                img_usage_error(cmd, "-S: %s is not a multiple of %u up to 16M (0 disables)",
                                optarg, IMG_SECTOR);
                return IMG_EXIT_ERROR;
            }
            break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (help) {
        img_print_create_options_help();
        return IMG_EXIT_OK;
    }
    if (opts->backing_file || opts->backing_format) {
        img_usage_error(cmd, "-o backing_file/backing_fmt: convert makes a complete copy, "
                             "without a backing file");
        return IMG_EXIT_ERROR;
    }
    if (copy.target_is_zero && !copy.existing) {
        img_usage_error(cmd, "--target-is-zero applies to an existing destination (-n)");
        return IMG_EXIT_ERROR;
    }
    if (copy.existing && have_options) {
        img_usage_error(cmd, "-o: with -n the destination exists; its options are set");
        return IMG_EXIT_ERROR;
    }
    /* The formats whose drivers implement rt_vd_write_compressed. */
    if (copy.compress && strcmp(dst_format, "qcow2")) {
        img_usage_error(cmd, "-c: the %s format has no compression (qcow2 has)", dst_format);
        return IMG_EXIT_ERROR;
    }
    if (argc - optind < 2) {
        img_usage_error(cmd, "SRC and DST are needed");
        return IMG_EXIT_ERROR;
    }
    if (argc - optind > 2) {
        img_usage_error(cmd, "unexpected argument '%s'", argv[optind + 2]);
        return IMG_EXIT_ERROR;
    }
    copy.src_path = argv[optind];
    copy.dst_path = argv[optind + 1];
    copy.chunk = copy.sparse > CHUNK_SIZE ? (size_t)copy.sparse : CHUNK_SIZE;
    return convert(&copy, src_format, dst_format, opts, progress && !quiet);
}

int img_convert_main(int argc, char **argv)
{
    rt_vd_create_opts_t opts = {0};
    int status = parse_and_convert(argc, argv, &opts);

    img_free_create_names(&opts);
    return status;
}
