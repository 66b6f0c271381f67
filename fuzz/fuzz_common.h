/*
 * What the per-driver fuzz harnesses share: the input becomes an image file, the file
 * is opened read-only (with the driver named, and again by probing), and everything a
 * reader of an untrusted image can ask is asked of it; then, when it also opens
 * writable, it is written (fuzz_writable), checked, repaired and reopened.
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

#include <stdbool.h>
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
    rc = rt_vd_check(vd, 0, &res);
    if (rc == RT_ERR_NOT_SUPPORTED)
        return; /* a format with nothing to check (raw) */
    fuzz_expect(rc, "rt_vd_check");
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

static void fuzz_fail(const char *what, int rc)
{
    fprintf(stderr, "writable pass: %s: %s (%d)\n", what, rt_status_name(rc), rc);
    abort();
}

/* Largest allocation unit the writable pass writes into (a VDI may have 64 MiB blocks:
 * slow, and tells nothing more). */
#define FUZZ_MAX_UNIT (1u << 20)

/* The writable pass: open @a path writable as @a format; write three small ranges
 * (start, middle, end of the disk: allocations on top of whatever map the input holds),
 * flush, check and repair, close, reopen read-only.  What any image that opened owes:
 * no crash and only documented statuses; the file reopens.  An input that checked clean
 * before the writes must check clean after them (no corruption; after the repair, no
 * leaks), and the bytes written read back, before the close and after the reopen (a
 * corrupt input may map two guest ranges to one cluster, as QEMU would read it too). */
static void fuzz_writable(const char *path, const char *format)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    if (rt_vd_open(&vd, path, format, 0, &err) != RT_OK)
        return;
    rt_vd_info_t info;
    int rc = rt_vd_get_info(vd, &info);
    if (rc != RT_OK)
        fuzz_fail("get_info", rc);
    if (info.block_size > FUZZ_MAX_UNIT || info.virtual_size == 0) {
        rt_vd_close(vd);
        return;
    }
    rt_vd_check_result_t res;
    /* A format with nothing to check (raw) is clean by definition. */
    bool checkable = (rc = rt_vd_check(vd, 0, &res)) != RT_ERR_NOT_SUPPORTED;
    if (checkable && rc != RT_OK)
        fuzz_fail("check before writing", rc);
    bool clean_before = !checkable || res.corruptions == 0;

    uint64_t size = info.virtual_size;
    enum { CHUNK = 4096 };
    static uint8_t pattern[3][CHUNK], back[CHUNK];
    uint64_t offs[3] = {0, size / 2 - (size / 2) % 512 + 100, size > CHUNK ? size - CHUNK : 0};
    uint64_t lens[3];
    for (int i = 0; i < 3; i++) {
        lens[i] = size - offs[i] < CHUNK ? size - offs[i] : CHUNK;
        if (offs[i] >= size)
            lens[i] = 0;
        /* The ranges must not overlap, or the later write wins the shared bytes. */
        for (int j = 0; j < i; j++)
            if (lens[j] > 0 && offs[i] < offs[j] + lens[j] && offs[j] < offs[i] + lens[i])
                lens[i] = 0;
        memset(pattern[i], 0xa1 + i, sizeof pattern[i]);
        if (lens[i] == 0)
            continue;
        rc = rt_vd_write(vd, offs[i], pattern[i], (size_t)lens[i]);
        if (rc == RT_ERR_VD_CORRUPT || rc == RT_ERR_DISK_FULL || rc == RT_ERR_NO_MEMORY ||
            rc == RT_ERR_FILE_TOO_BIG || rc == RT_ERR_OUT_OF_RANGE) {
            /* A table the write needs is bad, the map or the host is full, a refcount
             * cannot count higher: a refusal, not damage; the rest must still hold. */
            lens[i] = 0;
            continue;
        }
        if (rc != RT_OK)
            fuzz_fail("write", rc);
    }
    rc = rt_vd_flush(vd);
    if (rc == RT_ERR_VD_CORRUPT || rc == RT_ERR_DISK_FULL || rc == RT_ERR_NO_MEMORY ||
        rc == RT_ERR_FILE_TOO_BIG) {
        /* The commit met something it refuses; what it wrote is still ordered. */
        rt_vd_close(vd);
        return;
    }
    if (rc != RT_OK)
        fuzz_fail("flush", rc);
    memset(&res, 0, sizeof res);
    if (checkable && (rc = rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res)) != RT_OK)
        fuzz_fail("check -r leaks", rc);
    if (clean_before && res.corruptions != 0) {
        fprintf(stderr, "writable pass: our writes left a corruption: %s\n", res.first_problem);
        abort();
    }
    bool repaired = res.repair_refused[0] == '\0';
    if (checkable && (rc = rt_vd_check(vd, 0, &res)) != RT_OK)
        fuzz_fail("second check", rc);
    if (clean_before && (res.corruptions != 0 || (repaired && res.leaks != 0))) {
        fprintf(stderr, "writable pass: after repair %llu corruptions, %llu leaks: %s\n",
                (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                res.first_problem);
        abort();
    }
    for (int i = 0; i < 3; i++) {
        if (lens[i] == 0)
            continue;
        if ((rc = rt_vd_read(vd, offs[i], back, (size_t)lens[i])) != RT_OK)
            fuzz_fail("read back", rc);
        /* A corrupt image may map two guest ranges to one cluster (so may QEMU's). */
        if (clean_before && memcmp(back, pattern[i], (size_t)lens[i]) != 0) {
            fprintf(stderr, "writable pass: range %d (%llu+%llu) reads back different\n", i,
                    (unsigned long long)offs[i], (unsigned long long)lens[i]);
            abort();
        }
    }
    if ((rc = rt_vd_close(vd)) != RT_OK)
        fuzz_fail("close", rc);

    /* What we left behind opens and holds what we wrote. */
    if ((rc = rt_vd_open(&vd, path, format, RT_VD_OPEN_READ_ONLY, &err)) != RT_OK) {
        fprintf(stderr, "writable pass: the image no longer opens: %s: %s\n", rt_status_name(rc),
                err.msg);
        abort();
    }
    for (int i = 0; i < 3; i++) {
        if (lens[i] == 0)
            continue;
        if ((rc = rt_vd_read(vd, offs[i], back, (size_t)lens[i])) != RT_OK)
            fuzz_fail("read after reopen", rc);
        if (clean_before && memcmp(back, pattern[i], (size_t)lens[i]) != 0) {
            fprintf(stderr, "writable pass: range %d differs after reopen\n", i);
            abort();
        }
    }
    memset(&res, 0, sizeof res);
    if (checkable && (rc = rt_vd_check(vd, 0, &res)) != RT_OK)
        fuzz_fail("check after reopen", rc);
    if (clean_before && (res.corruptions != 0 || (repaired && res.leaks != 0))) {
        fprintf(stderr, "writable pass: after reopen %llu corruptions, %llu leaks: %s\n",
                (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                res.first_problem);
        abort();
    }
    rt_vd_close(vd);
}

#endif /* FUZZ_COMMON_H */
