/*
 * Data for the file-AIO tests: contents that are a function of the offset, and scratch
 * files opened O_DIRECT where the file system allows it.  Header-only, like
 * tst_common.h (include that first).
 */
#ifndef TST_DATA_H
#define TST_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include <rt/file.h>

/* File contents are a function of the offset (and a seed), so any read can be checked
 * without keeping a copy, and a byte landing at the wrong offset shows. */
static inline uint8_t pat(uint64_t off, unsigned seed)
{
    uint64_t x = (off + (uint64_t)seed * 0x10001u) * 0x9E3779B97F4A7C15ull;
    return (uint8_t)(x >> 56);
}

static inline void pat_fill(void *buf, uint64_t off, size_t len, unsigned seed)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = pat(off + i, seed);
}

static inline bool pat_check(const void *buf, uint64_t off, size_t len, unsigned seed)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++) {
        if (p[i] != pat(off + i, seed)) {
            fprintf(stderr, "  data mismatch at file offset %llu: 0x%02x, expected 0x%02x\n",
                    (unsigned long long)(off + i), p[i], pat(off + i, seed));
            return false;
        }
    }
    return true;
}

/*
 * Creates (or replaces) the scratch file @a name of @a size bytes and opens it with
 * @a flags (access mode and hints; RT_FILE_CREATE_REPLACE is added), O_DIRECT too when
 * @a direct and the file system allows it; a note says once when it does not.
 */
static inline rt_file_t tst_scratch_file(const char *name, uint64_t size, uint32_t flags,
                                         bool direct)
{
    static bool told_no_direct;
    char path[600];
    rt_file_t file = RT_FILE_NIL;
    int rc = RT_ERR_NOT_SUPPORTED;

    flags |= RT_FILE_CREATE_REPLACE;
    tst_path(path, sizeof path, name);
    if (direct)
        rc = rt_file_open(&file, path, flags | RT_FILE_NO_CACHE, 0);
    if (rc == RT_ERR_NOT_SUPPORTED) {
        if (direct && !told_no_direct)
            printf("\n    note: %s refuses O_DIRECT (%s); using cached I/O ", tst_dir(),
                   rt_strerror(rc));
        told_no_direct = told_no_direct || direct;
        rc = rt_file_open(&file, path, flags, 0);
    }
    TST_RC_FATAL(rc, RT_OK);
    TST_RC_FATAL(rt_file_set_size(file, size), RT_OK);
    return file;
}

#endif /* TST_DATA_H */
