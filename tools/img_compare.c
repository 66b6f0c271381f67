/*
 * vrt-img compare: whether two images hold the same guest contents, with qemu-img
 * compare's messages and exit statuses (0 identical, 1 different, 2 error).
 *
 * Both images are walked together by block status: a run both report as zeros is
 * skipped without reading; a run one reports as zeros is read only from the other,
 * which must then be all zeros; everything else is read from both and compared.  A
 * mismatch is reported at the 512-byte sector where it starts, as qemu-img does.  When
 * the sizes differ, the tail of the larger image must read as zeros (unless -s, which
 * makes any size difference a mismatch).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <rt/err.h>
#include <rt/mem.h>
#include <rt/vd.h>

#include "cli_common.h"
#include "img.h"

#define COMPARE_EXIT_DIFFERENT 1
#define COMPARE_EXIT_ERROR     2
#define COMPARE_CHUNK          (1u << 20)

static const char usage_text[] =
    "Usage: " PROG " compare [-f FMT] [-F FMT] [-p] [-q] [-s] FILE1 FILE2\n"
    "Check whether two images hold the same guest contents.\n"
    "\n"
    "  -f FMT      FILE1's format; default: probe it\n"
    "  -F FMT      FILE2's format; default: probe it\n"
    "  -p          show progress (the default when stdout is a terminal)\n"
    "  -q          quiet: print nothing, only the exit status tells\n"
    "  -U          read both images even while another process (a running guest)\n"
    "              has them open for writing, without taking their locks\n"
    "  -s          strict: images of different sizes, or whose allocation differs,\n"
    "              are different\n"
    "  -h, --help  print this text and exit\n"
    "\n"
    "Without -s, images of different sizes are identical when the part of the larger\n"
    "one beyond the smaller one's end reads as zeros.\n"
    "\n"
    "Exit status: 0 identical, 1 different, 2 error (including bad usage).\n";

/* One of the two images. */
struct side {
    const char *path;
    rt_vd_t vd;
    uint64_t size;
    unsigned char *buf;
    rt_vd_extent_t ext; /* the last block status, reused while it covers the offset */
    bool ext_valid;
};

struct compare {
    struct side side[2];
    bool quiet, strict;
    struct cli_progress progress;
    uint64_t total;
};

/* Outcome of a step: go on, the images differ, or a call failed. */
enum verdict { SAME, DIFFERENT, FAILED };

static enum verdict side_status(struct side *s, uint64_t off, uint64_t end)
{
    char what[IMG_WHAT_MAX];
    int rc;

    if (s->ext_valid && off >= s->ext.offset && off < s->ext.offset + s->ext.length)
        return SAME;
    rc = rt_vd_block_status(s->vd, off, end - off, &s->ext);
    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "reading the allocation map of '%s' at offset %" PRIu64,
                 s->path, off);
        img_report(what, rc, NULL);
        return FAILED;
    }
    s->ext_valid = true;
    return SAME;
}

static enum verdict side_read(struct side *s, uint64_t off, size_t len)
{
    char what[IMG_WHAT_MAX];
    int rc = rt_vd_read(s->vd, off, s->buf, len);

    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "reading '%s' at offset %" PRIu64, s->path, off);
        img_report(what, rc, NULL);
        return FAILED;
    }
    return SAME;
}

static uint64_t ext_end(const struct side *s)
{
    return s->ext.offset + s->ext.length;
}

static enum verdict mismatch(struct compare *cmp, uint64_t off)
{
    cli_progress_end(&cmp->progress, false);
    if (!cmp->quiet)
        printf("Content mismatch at offset %" PRIu64 "!\n", off / IMG_SECTOR * IMG_SECTOR);
    return DIFFERENT;
}

/* The first byte of @a s->buf[0..len) that is not zero, or len. */
static size_t first_nonzero(const unsigned char *buf, size_t len)
{
    size_t i = 0;

    /* Sector by sector with the fast test, then bytes in the sector that fails. */
    while (i < len) {
        size_t n = len - i < IMG_SECTOR ? len - i : IMG_SECTOR;

        if (!img_is_zero(buf + i, n))
            break;
        i += n;
    }
    while (i < len && buf[i] == 0)
        i++;
    return i;
}

static size_t first_difference(const unsigned char *a, const unsigned char *b, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t n = len - i < IMG_SECTOR ? len - i : IMG_SECTOR;

        if (memcmp(a + i, b + i, n))
            break;
        i += n;
    }
    while (i < len && a[i] == b[i])
        i++;
    return i;
}

/* Bytes to read for the step at @a off, at most one buffer and not past @a stop. */
static size_t chunk_len(uint64_t off, uint64_t stop)
{
    return (size_t)(stop - off < COMPARE_CHUNK ? stop - off : COMPARE_CHUNK);
}

/* Reports progress up to @a off; false when the user asked to stop. */
static bool progress_and_go_on(struct compare *cmp, uint64_t off)
{
    cli_progress_update(&cmp->progress, off, cmp->total);
    return !img_stop_requested();
}

/* [off, end) of @a s must read as zeros. */
static enum verdict expect_zeros(struct compare *cmp, struct side *s, uint64_t off, uint64_t end)
{
    while (off < end) {
        uint64_t stop;
        size_t len, at;

        if (side_status(s, off, end) == FAILED)
            return FAILED;
        stop = ext_end(s) < end ? ext_end(s) : end;
        if (s->ext.flags & RT_VD_EXTENT_ZERO) {
            off = stop;
            continue;
        }
        len = chunk_len(off, stop);
        if (side_read(s, off, len) == FAILED)
            return FAILED;
        at = first_nonzero(s->buf, len);
        if (at < len)
            return mismatch(cmp, off + at);
        off += len;
        if (!progress_and_go_on(cmp, off))
            return FAILED;
    }
    return SAME;
}

/* Compares [0, end) of both images. */
static enum verdict compare_common(struct compare *cmp, uint64_t end)
{
    struct side *a = &cmp->side[0], *b = &cmp->side[1];
    uint64_t off = 0;

    while (off < end) {
        uint64_t stop;
        size_t len, at;
        bool zero_a, zero_b;

        if (side_status(a, off, end) == FAILED || side_status(b, off, end) == FAILED)
            return FAILED;
        stop = ext_end(a) < ext_end(b) ? ext_end(a) : ext_end(b);
        if (stop > end)
            stop = end;
        if (cmp->strict &&
            (a->ext.flags & RT_VD_EXTENT_ALLOCATED) != (b->ext.flags & RT_VD_EXTENT_ALLOCATED)) {
            cli_progress_end(&cmp->progress, false);
            if (!cmp->quiet)
                printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", off);
            return DIFFERENT;
        }
        zero_a = a->ext.flags & RT_VD_EXTENT_ZERO;
        zero_b = b->ext.flags & RT_VD_EXTENT_ZERO;
        if (zero_a || zero_b) {
            enum verdict v = zero_a && zero_b ? SAME
                             : zero_a         ? expect_zeros(cmp, b, off, stop)
                                              : expect_zeros(cmp, a, off, stop);
            if (v != SAME)
                return v;
            off = stop;
            continue;
        }
        len = chunk_len(off, stop);
        if (side_read(a, off, len) == FAILED || side_read(b, off, len) == FAILED)
            return FAILED;
        at = first_difference(a->buf, b->buf, len);
        if (at < len)
            return mismatch(cmp, off + at);
        off += len;
        if (!progress_and_go_on(cmp, off))
            return FAILED;
    }
    return SAME;
}

static enum verdict compare_images(struct compare *cmp)
{
    struct side *a = &cmp->side[0], *b = &cmp->side[1];
    struct side *larger = a->size > b->size ? a : b;
    uint64_t common = a->size < b->size ? a->size : b->size;
    enum verdict v;

    if (a->size != b->size) {
        if (cmp->strict) {
            if (!cmp->quiet)
                printf("Strict mode: Image size mismatch!\n");
            return DIFFERENT;
        }
        if (!cmp->quiet)
            printf("Warning: Image size mismatch!\n");
    }
    v = compare_common(cmp, common);
    if (v == SAME && larger->size > common)
        v = expect_zeros(cmp, larger, common, larger->size);
    return v;
}

static int open_side(struct side *s, const char *format)
{
    rt_vd_info_t info;
    int rc = img_open_info(&s->vd, s->path, format, RT_VD_OPEN_READ_ONLY, &info);

    if (RT_FAILURE(rc))
        return rc;
    s->size = info.virtual_size;
    s->buf = rt_mem_page_alloc(COMPARE_CHUNK);
    if (!s->buf) {
        img_report("allocating buffers", RT_ERR_NO_MEMORY, NULL);
        return RT_ERR_NO_MEMORY;
    }
    return RT_OK;
}

static const struct option long_options[] = {
    {"force-share", no_argument, NULL, 'U'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int img_compare_main(int argc, char **argv)
{
    const char *cmd = argv[0], *format[2] = {NULL, NULL};
    struct compare cmp = {0};
    bool progress = isatty(STDOUT_FILENO);
    enum verdict v = FAILED;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:F:pqsUh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format[0] = optarg; break;
        case 'F': format[1] = optarg; break;
        case 'p': progress = true; break;
        case 'q': cmp.quiet = true; break;
        case 's': cmp.strict = true; break;
        case 'U': img_force_share = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return COMPARE_EXIT_ERROR;
        }
    }
    if (argc - optind != 2) {
        img_usage_error(cmd, "two images, FILE1 and FILE2, are needed");
        return COMPARE_EXIT_ERROR;
    }
    cmp.side[0].path = argv[optind];
    cmp.side[1].path = argv[optind + 1];
    if (RT_SUCCESS(open_side(&cmp.side[0], format[0])) &&
        RT_SUCCESS(open_side(&cmp.side[1], format[1]))) {
        img_install_stop_handler();
        cmp.total = cmp.side[0].size > cmp.side[1].size ? cmp.side[0].size : cmp.side[1].size;
        cli_progress_start_qemu(&cmp.progress, progress && !cmp.quiet);
        v = compare_images(&cmp);
        cli_progress_end(&cmp.progress, v == SAME);
        if (v == SAME && !cmp.quiet)
            printf("Images are identical.\n");
    }
    for (int i = 0; i < 2; i++) {
        rt_vd_close(cmp.side[i].vd);
        rt_mem_page_free(cmp.side[i].buf, COMPARE_CHUNK);
    }
    return v == SAME ? IMG_EXIT_OK : v == DIFFERENT ? COMPARE_EXIT_DIFFERENT : COMPARE_EXIT_ERROR;
}
