/*
 * What the per-driver fuzz harnesses share: the input becomes an image file, the file
 * is opened read-only (with the driver named, and again by probing), and everything a
 * reader of an untrusted image can ask is asked of it.
 *
 * The file is a memfd created once per process and reached through /proc/self/fd, so
 * no run leaves anything on disk and each input costs a truncate and a write.  A
 * sanitizer report, a crash, or a status the header does not list is the finding; a
 * refused image is the expected answer to most inputs.
 *
 * Header-only: each harness is one .c file plus this.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#define _GNU_SOURCE /* memfd_create */

#include <rt/vd.h>
#include <rt/err.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads at most this much per range, three ranges per image. */
#define FUZZ_READ_BYTES (256u * 1024u)
/* block_status walk bound: a map of 16 K entries (64 KiB input) answers in far fewer. */
#define FUZZ_MAX_EXTENTS 100000u

static char fuzz_path[64];
static int fuzz_fd = -1;

/* Puts @a data into the image file; returns its path. */
static const char *fuzz_image(const uint8_t *data, size_t size)
{
    if (fuzz_fd < 0) {
        fuzz_fd = memfd_create("vrt-fuzz", 0);
        if (fuzz_fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(fuzz_path, sizeof fuzz_path, "/proc/self/fd/%d", fuzz_fd);
    }
    if (ftruncate(fuzz_fd, 0) != 0) {
        perror("ftruncate");
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fuzz_fd, data + done, size - done, (off_t)done);
        if (n <= 0) {
            perror("pwrite");
            abort();
        }
        done += (size_t)n;
    }
    return fuzz_path;
}

/* A status the API documents for an image that opened: anything else is a finding. */
static void fuzz_expect(int rc, const char *what)
{
    if (rc == RT_OK || rc == RT_ERR_VD_CORRUPT || rc == RT_ERR_IO || rc == RT_ERR_NO_MEMORY)
        return;
    fprintf(stderr, "%s: unexpected status %s (%d)\n", what, rt_status_name(rc), rc);
    abort();
}

/* Everything a read-only user does with an open image. */
static void fuzz_exercise(rt_vd_t vd)
{
    rt_vd_info_t info;
    int rc = rt_vd_get_info(vd, &info);
    fuzz_expect(rc, "rt_vd_get_info");
    if (rc != RT_OK)
        return;
    if (info.blocks_allocated > info.blocks_total) {
        fprintf(stderr, "info: %llu blocks allocated of %llu\n",
                (unsigned long long)info.blocks_allocated, (unsigned long long)info.blocks_total);
        abort();
    }
    uint64_t size = info.virtual_size;

    /* The whole map, extent after extent: each must be non-empty, contiguous, in range. */
    uint64_t off = 0;
    for (unsigned n = 0; off < size && n < FUZZ_MAX_EXTENTS; n++) {
        rt_vd_extent_t ext;
        rc = rt_vd_block_status(vd, off, size - off, &ext);
        fuzz_expect(rc, "rt_vd_block_status");
        if (rc != RT_OK)
            break;
        if (ext.offset != off || ext.length == 0 || ext.length > size - off) {
            fprintf(stderr, "block_status at %llu: offset %llu length %llu (size %llu)\n",
                    (unsigned long long)off, (unsigned long long)ext.offset,
                    (unsigned long long)ext.length, (unsigned long long)size);
            abort();
        }
        off += ext.length;
    }

    /* Start, middle, end. */
    static uint8_t buf[FUZZ_READ_BYTES];
    uint64_t len = size < FUZZ_READ_BYTES ? size : FUZZ_READ_BYTES;
    uint64_t starts[3] = {0, size / 2 - (size / 2) % 512, size - len};
    for (int i = 0; i < 3 && len > 0; i++) {
        uint64_t l = len;
        if (l > size - starts[i])
            l = size - starts[i];
        fuzz_expect(rt_vd_read(vd, starts[i], buf, (size_t)l), "rt_vd_read");
    }
    /* An unaligned odd-sized one too: the layer rounds it. */
    if (size > 1000)
        fuzz_expect(rt_vd_read(vd, 333, buf, 555), "rt_vd_read unaligned");

    rt_vd_check_result_t res;
    fuzz_expect(rt_vd_check(vd, 0, &res), "rt_vd_check");
    /* Repair needs a writable image: a read-only one must say so, not try. */
    rc = rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res);
    if (rc != RT_ERR_VD_READ_ONLY) {
        fprintf(stderr, "repair on a read-only image: %s\n", rt_status_name(rc));
        abort();
    }
}

/* Opens @a path read-only as @a format (NULL probes) and exercises it if it opens. */
static void fuzz_open_read_only(const char *path, const char *format)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, path, format, RT_VD_OPEN_READ_ONLY, &err);
    if (rc != RT_OK) {
        if (vd != RT_VD_NIL) {
            fprintf(stderr, "failed open left a handle\n");
            abort();
        }
        /* A refusal names its reason. */
        if ((rc == RT_ERR_VD_CORRUPT || rc == RT_ERR_NOT_SUPPORTED) && err.msg[0] == '\0') {
            fprintf(stderr, "open refused with %s and no message\n", rt_status_name(rc));
            abort();
        }
        return;
    }
    fuzz_exercise(vd);
    rc = rt_vd_close(vd);
    if (rc != RT_OK) {
        fprintf(stderr, "rt_vd_close: %s\n", rt_status_name(rc));
        abort();
    }
}

#endif /* FUZZ_COMMON_H */
