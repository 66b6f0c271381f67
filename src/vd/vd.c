/*
 * The image handle: open (with probing), create, close, and the synchronous calls,
 * which run on a private queue so that there is one I/O path, not two.
 */
#include "config.h"

#include <rt/mem.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal/file.h"
#include "internal/handle_pool.h"
#include "internal/magic.h"
#include "vd/vd_internal.h"

static struct rt__handle_pool vd_pool = RT__HANDLE_POOL_INIT(struct rt_vd, next_free);

#define OPEN_FLAGS                                                                                 \
    (RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_NO_CACHE | RT_VD_OPEN_ALLOW_BACKING |                       \
     RT_VD_OPEN_NO_BACKING | RT_VD_OPEN_FORCE_SHARE)
#define PROBE_BYTES 4096u
#define MAX_IOV 1024u

/* The one list of drivers.  raw accepts anything, so it probes last and only wins when
 * nobody else claims. */
const struct vd_driver *const rt__vd_drivers[] = {&rt__vd_qcow2_driver, &rt__vd_vdi_driver,
                                                  &rt__vd_raw_driver, NULL};
#define DRIVER_COUNT (sizeof(rt__vd_drivers) / sizeof(rt__vd_drivers[0]) - 1)

static const char *driver_names[DRIVER_COUNT + 1];
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static void name_drivers(void)
{
    for (size_t i = 0; i < DRIVER_COUNT; i++)
        driver_names[i] = rt__vd_drivers[i]->name;
}

const char *const *rt_vd_formats(void)
{
    pthread_once(&names_once, name_drivers);
    return driver_names;
}

const rt_vd_option_t *rt_vd_format_options(const char *format, int kind)
{
    static const rt_vd_option_t none[] = {{NULL, NULL, NULL}};
    const struct vd_driver *driver = format != NULL ? rt__vd_driver_find(format) : NULL;
    if (driver == NULL || (kind != RT_VD_OPTIONS_CREATE && kind != RT_VD_OPTIONS_OPEN))
        return NULL;
    const rt_vd_option_t *list =
        kind == RT_VD_OPTIONS_CREATE ? driver->create_options : driver->open_options;
    return list != NULL ? list : none;
}

const char *rt__vd_option(const char *const *options, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; options != NULL && options[i] != NULL; i++)
        if (strncmp(options[i], name, n) == 0 && options[i][n] == '=')
            return options[i] + n + 1;
    return NULL;
}

bool rt__vd_parse_size(const char *text, uint64_t *value)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || text[0] == '-')
        return false;
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    default: return false;
    }
    if (*end != '\0' || (shift > 0 && v > (UINT64_MAX >> shift)))
        return false;
    *value = (uint64_t)v << shift;
    return true;
}

/* Every "name=value" of @a options must be one @a allowed lists, once. */
static int check_options(const struct vd_driver *driver, const rt_vd_option_t *allowed,
                         const char *const *options, rt_vd_error_t *err)
{
    for (size_t i = 0; options != NULL && options[i] != NULL; i++) {
        const char *eq = strchr(options[i], '=');
        size_t n = eq != NULL ? (size_t)(eq - options[i]) : strlen(options[i]);
        bool known = false;
        for (const rt_vd_option_t *o = allowed; o != NULL && o->name != NULL && !known; o++)
            known = strlen(o->name) == n && strncmp(o->name, options[i], n) == 0;
        if (eq == NULL || n == 0 || !known)
            return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                               "%s: '%.64s' is not an option of the format%s", driver->name,
                               options[i], eq == NULL && known ? " with a value" : "");
        for (size_t j = 0; j < i; j++)
            if (strncmp(options[j], options[i], n + 1) == 0)
                return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "%s: option '%.*s' given twice",
                                   driver->name, (int)n, options[i]);
    }
    return RT_OK;
}

const struct vd_driver *rt__vd_driver_find(const char *name)
{
    for (const struct vd_driver *const *d = rt__vd_drivers; *d != NULL; d++)
        if (strcmp((*d)->name, name) == 0)
            return *d;
    return NULL;
}

int rt__vd_fail(rt_vd_error_t *err, int rc, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return rc;
}

bool rt__vd_live(rt_vd_t vd)
{
    return vd != NULL && vd->magic == RT__MAGIC_VD;
}

/* ---------------------------------------------------------------------------------- */
/* Metadata I/O. */

/* Runs one aligned window [lo, hi) through a page-aligned bounce buffer: reads it
 * (zeros past end of file), lets the caller patch it, and writes it back if asked. */
static int meta_bounce(rt_vd_t vd, rt_file_t file, uint64_t off, void *rd, const void *wr,
                       size_t len)
{
    uint64_t align = vd->align;
    uint64_t lo = off - off % align;
    uint64_t hi = off + len + (align - (off + len) % align) % align;
    size_t span = (size_t)(hi - lo);
    uint8_t *bounce = rt_mem_page_alloc(span);
    if (bounce == NULL)
        return RT_ERR_NO_MEMORY;
    size_t got = 0;
    int rc = RT_OK;
    if (rd != NULL || lo != off || hi != off + len)
        rc = rt_file_read_at(file, lo, bounce, span, &got);
    if (rc == RT_OK) {
        memset(bounce + got, 0, span - got);
        if (rd != NULL) {
            memcpy(rd, bounce + (off - lo), len);
        } else {
            memcpy(bounce + (off - lo), wr, len);
            rc = rt_file_write_at(file, lo, bounce, span, NULL);
        }
    }
    rt_mem_page_free(bounce, span);
    return rc;
}

int rt__vd_meta_read(rt_vd_t vd, uint64_t off, void *buf, size_t len)
{
    return rt__vd_file_read(vd, 0, off, buf, len);
}

int rt__vd_file_read(rt_vd_t vd, uint32_t index, uint64_t off, void *buf, size_t len)
{
    if (index >= vd->nfiles)
        return RT_ERR_VD_CORRUPT; /* a driver's map named a file it never added */
    if (vd->align > 1)
        return meta_bounce(vd, vd->files[index], off, buf, NULL, len);
    return rt_file_read_at(vd->files[index], off, buf, len, NULL);
}

int rt__vd_add_file(rt_vd_t vd, rt_file_t file, uint32_t *index)
{
    size_t cap = vd->files == &vd->file ? 0 : vd->files_cap;
    rt_file_t *files = vd->files == &vd->file ? NULL : vd->files;
    if (vd->nfiles == UINT32_MAX)
        return RT_ERR_NO_MEMORY;
    rt_file_t *grown = rt__vd_grow(files, &cap, vd->nfiles, sizeof(*grown), 4);
    if (grown == NULL)
        return RT_ERR_NO_MEMORY;
    if (files == NULL)
        grown[0] = vd->file;
    grown[vd->nfiles] = file;
    vd->files = grown;
    vd->files_cap = cap;
    *index = vd->nfiles++;
    return RT_OK;
}

/* Closes every file but the image file itself; the first failure is returned. */
static int close_added_files(rt_vd_t vd)
{
    int rc = RT_OK;
    for (uint32_t i = 1; i < vd->nfiles; i++) {
        int one = rt_file_close(vd->files[i]);
        if (rc == RT_OK)
            rc = one;
    }
    if (vd->files != &vd->file)
        free(vd->files);
    vd->files = &vd->file;
    vd->nfiles = 1;
    return rc;
}

int rt__vd_meta_write(rt_vd_t vd, uint64_t off, const void *buf, size_t len)
{
    if (vd->read_only)
        return RT_ERR_VD_READ_ONLY;
    if (vd->align > 1)
        return meta_bounce(vd, vd->file, off, NULL, buf, len);
    return rt_file_write_at(vd->file, off, buf, len, NULL);
}

int rt__vd_meta_flush(rt_vd_t vd)
{
    if (vd->poisoned != RT_OK)
        return vd->poisoned;
    for (uint32_t i = 0; i < vd->nfiles; i++) {
        int rc = rt_file_flush(vd->files[i]);
        if (rc != RT_OK) {
            vd->poisoned = rc;
            return rc;
        }
    }
    return RT_OK;
}

int rt__vd_punch(rt_vd_t vd, uint64_t off, uint64_t len)
{
    if (vd->read_only)
        return RT_ERR_VD_READ_ONLY;
#if defined(HAVE_FALLOCATE) && HAVE_DECL_FALLOC_FL_PUNCH_HOLE && HAVE_DECL_FALLOC_FL_KEEP_SIZE
    int fd = (int)rt_file_to_native(vd->file);
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return RT_OK;
    if (errno == EOPNOTSUPP || errno == ENOSYS)
        return RT_ERR_NOT_SUPPORTED;
    return rt_err_from_errno(errno);
#else
    (void)off;
    (void)len;
    return RT_ERR_NOT_SUPPORTED;
#endif
}

int rt__vd_zero_range(rt_vd_t vd, uint64_t off, uint64_t len)
{
    if (vd->read_only)
        return RT_ERR_VD_READ_ONLY;
#if defined(HAVE_FALLOCATE) && HAVE_DECL_FALLOC_FL_ZERO_RANGE
    int fd = (int)rt_file_to_native(vd->file);
    if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return RT_OK;
    if (errno == EOPNOTSUPP || errno == ENOSYS)
        return RT_ERR_NOT_SUPPORTED;
    return rt_err_from_errno(errno);
#else
    (void)off;
    (void)len;
    return RT_ERR_NOT_SUPPORTED;
#endif
}

/* ---------------------------------------------------------------------------------- */
/* Open, create, close. */

/* Shows every driver the file's head and tail; the most certain one wins. */
static int probe(rt_file_t file, const char *path, const struct vd_driver **found,
                 rt_vd_error_t *err)
{
    uint64_t size = 0;
    int rc = rt_file_get_size(file, &size);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "%s: cannot read its size", path);
    /* The file may be open with O_DIRECT: aligned memory, and the tail read from an
     * aligned offset. */
    uint8_t *head = rt_mem_page_alloc(PROBE_BYTES);
    uint8_t *tail = rt_mem_page_alloc(2 * PROBE_BYTES);
    if (head == NULL || tail == NULL) {
        rc = RT_ERR_NO_MEMORY;
        goto out;
    }
    struct vd_probe p = {head, tail, 0, 0, size};
    if ((rc = rt_file_read_at(file, 0, head, PROBE_BYTES, &p.head_len)) != RT_OK) {
        rt__vd_fail(err, rc, "%s: cannot read its first sector", path);
        goto out;
    }
    uint64_t want = size < PROBE_BYTES ? size : PROBE_BYTES;
    uint64_t from = (size - want) / PROBE_BYTES * PROBE_BYTES;
    size_t got = 0;
    if ((rc = rt_file_read_at(file, from, tail, 2 * PROBE_BYTES, &got)) != RT_OK) {
        rt__vd_fail(err, rc, "%s: cannot read its last sector", path);
        goto out;
    }
    p.tail = tail + (size - want - from);
    p.tail_len = (size_t)want;
    int best = 0;
    for (const struct vd_driver *const *d = rt__vd_drivers; *d != NULL; d++) {
        int score = (*d)->probe(&p);
        if (score > best) {
            best = score;
            *found = *d;
        }
    }
    if (best == 0)
        rc = rt__vd_fail(err, RT_ERR_VD_UNKNOWN_FORMAT, "%s: format not recognized", path);
out:
    rt_mem_page_free(head, PROBE_BYTES);
    rt_mem_page_free(tail, 2 * PROBE_BYTES);
    return rc;
}

/* The smallest O_DIRECT transfer the file takes: 512 where the device has 512-byte
 * logical sectors, else a page (safe for sectors up to 4 KiB).  Asked of the kernel by
 * trying, since there is no portable query. */
static uint32_t direct_granule(rt_file_t file)
{
    uint32_t page = (uint32_t)rt_mem_page_size();
    void *buf = rt_mem_page_alloc(page);
    if (buf == NULL)
        return page;
    size_t got = 0;
    int rc = rt_file_read_at(file, 0, buf, 512, &got);
    rt_mem_page_free(buf, page);
    return rc == RT_OK ? 512u : page;
}

static int rt_vd_open_at_depth(rt_vd_t *vd_out, const char *path, const char *format,
                               uint32_t flags, const char *const *options, unsigned depth,
                               rt_vd_error_t *err);

int rt_vd_open(rt_vd_t *vd_out, const char *path, const char *format, uint32_t flags,
               rt_vd_error_t *err)
{
    return rt_vd_open_at_depth(vd_out, path, format, flags, NULL, 0, err);
}

int rt_vd_open_with(rt_vd_t *vd_out, const char *path, const char *format, uint32_t flags,
                    const char *const *options, rt_vd_error_t *err)
{
    return rt_vd_open_at_depth(vd_out, path, format, flags, options, 0, err);
}

static int rt_vd_open_at_depth(rt_vd_t *vd_out, const char *path, const char *format,
                               uint32_t flags, const char *const *options, unsigned depth,
                               rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (vd_out != NULL)
        *vd_out = RT_VD_NIL;
    if (vd_out == NULL || path == NULL)
        return RT_ERR_INVALID_POINTER;
    if (flags & ~OPEN_FLAGS)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "unknown open flag 0x%x",
                           flags & ~OPEN_FLAGS);
    bool read_only = flags & RT_VD_OPEN_READ_ONLY;
    if ((flags & RT_VD_OPEN_NO_BACKING) && (flags & RT_VD_OPEN_ALLOW_BACKING))
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "an image opened without its backing file (RT_VD_OPEN_NO_BACKING) "
                           "cannot also follow it");
    if ((flags & RT_VD_OPEN_FORCE_SHARE) && !read_only)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "force-share (RT_VD_OPEN_FORCE_SHARE) is for read-only opens: a "
                           "writer must hold the lock");
    if (format == NULL && !read_only)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "%s: the format must be given to open an image for writing "
                           "(a probe can be fooled by what a guest wrote)",
                           path);
    const struct vd_driver *driver = NULL;
    if (format != NULL && (driver = rt__vd_driver_find(format)) == NULL)
        return rt__vd_fail(err, RT_ERR_VD_UNKNOWN_FORMAT, "unknown image format '%s'", format);
    if (options != NULL && options[0] != NULL && driver == NULL)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "%s: format options need the format to be given", path);
    int rc;
    if (driver != NULL && (rc = check_options(driver, driver->open_options, options, err)) != RT_OK)
        return rc;
    if (driver != NULL && !read_only && !(driver->caps & VD_CAP_WRITE))
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "%s images can only be read", driver->name);

    uint32_t file_flags = (read_only ? RT_FILE_READ : RT_FILE_READWRITE) | RT_FILE_OPEN |
                          RT_FILE_ASYNC_IO;
    if (flags & RT_VD_OPEN_NO_CACHE)
        file_flags |= RT_FILE_NO_CACHE;
    rt_file_t file = RT_FILE_NIL;
    const char *kind = NULL;
    rc = rt__file_open_disk(&file, path, file_flags, &kind);
    if (rc != RT_OK && kind != NULL)
        return rt__vd_fail(err, rc,
                           "%s is %s, not a disk image: images are regular files or block "
                           "devices",
                           path, kind);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "%s: %s", path, rt_strerror(rc));
    /* Locked before anything is read: a writer's half-written metadata is not ours. */
    if (!(flags & RT_VD_OPEN_FORCE_SHARE) &&
        (rc = rt__vd_lock(file, path, !read_only, err)) != RT_OK)
        goto fail_file;
    if (driver == NULL && (rc = probe(file, path, &driver, err)) != RT_OK)
        goto fail_file;

    rt_vd_t vd = rt__handle_alloc(&vd_pool);
    if (vd == NULL) {
        rc = RT_ERR_NO_MEMORY;
        goto fail_file;
    }
    vd->driver = driver;
    vd->file = file;
    vd->files = &vd->file;
    vd->nfiles = 1;
    vd->chain_depth = depth;
    vd->read_only = read_only;
    vd->no_cache = flags & RT_VD_OPEN_NO_CACHE;
    vd->allow_backing = flags & RT_VD_OPEN_ALLOW_BACKING;
    vd->no_backing = flags & RT_VD_OPEN_NO_BACKING;
    vd->force_share = flags & RT_VD_OPEN_FORCE_SHARE;
    if ((vd->path = strdup(path)) == NULL) {
        rc = RT_ERR_NO_MEMORY;
        vd->magic = RT__MAGIC_DEAD;
        rt__handle_free(&vd_pool, vd);
        goto fail_file;
    }
    vd->align = vd->no_cache ? direct_granule(file) : 1;
    rc = driver->open(vd, options, err);
    if (rc == RT_OK && vd->data_align % vd->align != 0)
        rc = rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                         "image data is aligned to %u bytes, but this file needs %u for "
                         "uncached I/O; open it cached",
                         vd->data_align, vd->align);
    if (rc != RT_OK) {
        if (vd->priv != NULL)
            driver->close(vd); /* opened, then refused by the granule check */
        close_added_files(vd);
        rt_vd_close(vd->backing);
        free(vd->backing_name);
        free(vd->backing_format);
        free(vd->path);
        vd->magic = RT__MAGIC_DEAD;
        rt__handle_free(&vd_pool, vd);
        goto fail_file;
    }
    vd->magic = RT__MAGIC_VD;
    *vd_out = vd;
    return RT_OK;

fail_file:
    rt_file_close(file);
    return rc;
}

/* The deepest backing chain followed, counting the image opened: far deeper than any
 * chain seen in use (qemu-img follows chains of hundreds), yet a loop, or a hostile
 * image naming itself through many names, stops here: each layer costs a descriptor
 * and its metadata. */
#define MAX_CHAIN 256

/* @a name as an image that @a base names it means it: relative to @a base's folder.
 * A new string (NULL when out of memory). */
static char *path_beside(const char *base, const char *name)
{
    const char *slash = strrchr(base, '/');
    if (name[0] == '/' || slash == NULL)
        return strdup(name);
    size_t dir_len = (size_t)(slash - base) + 1;
    char *full = malloc(dir_len + strlen(name) + 1);
    if (full != NULL) {
        memcpy(full, base, dir_len);
        strcpy(full + dir_len, name);
    }
    return full;
}

void *rt__vd_grow(void *items, size_t *cap, size_t len, size_t item_size, size_t first_cap)
{
    size_t grown_cap;
    void *grown;

    if (len < *cap)
        return items;
    grown_cap = *cap ? *cap * 2 : first_cap;
    grown = realloc(items, grown_cap * item_size);
    if (grown != NULL)
        *cap = grown_cap;
    return grown;
}

int rt__vd_open_reference(rt_vd_t vd, const char *name, const char *format, rt_vd_t *out,
                          rt_vd_error_t *err)
{
    *out = RT_VD_NIL;
    if (vd->chain_depth + 1 >= MAX_CHAIN)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "backing chain deeper than %d images (a loop?) at '%s'", MAX_CHAIN,
                           name);
    /* A relative name is relative to the image that names it, not to our directory. */
    char *full = path_beside(vd->path, name);
    if (full == NULL)
        return RT_ERR_NO_MEMORY;
    uint32_t flags = RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING |
                     (vd->no_cache ? RT_VD_OPEN_NO_CACHE : 0) |
                     (vd->force_share ? RT_VD_OPEN_FORCE_SHARE : 0);
    rt_vd_error_t inner;
    inner.msg[0] = '\0';
    int rc = rt_vd_open_at_depth(out, full, format, flags, NULL, vd->chain_depth + 1, &inner);
    if (rc != RT_OK && strncmp(inner.msg, "backing ", 8) == 0)
        rt__vd_fail(err, rc, "%s", inner.msg); /* deeper in the chain: already named */
    else if (rc != RT_OK)
        rt__vd_fail(err, rc, "backing file %.100s: %.140s", full, inner.msg);
    free(full);
    return rc;
}

int rt__vd_set_backing_names(rt_vd_t vd, const char *name, const char *format)
{
    char *n = name != NULL ? strdup(name) : NULL;
    char *f = format != NULL ? strdup(format) : NULL;
    if ((name != NULL && n == NULL) || (format != NULL && f == NULL)) {
        free(n);
        free(f);
        return RT_ERR_NO_MEMORY;
    }
    free(vd->backing_name);
    free(vd->backing_format);
    vd->backing_name = n;
    vd->backing_format = f;
    return RT_OK;
}

int rt__vd_open_backing(rt_vd_t vd, const char *name, const char *format, rt_vd_error_t *err)
{
    int rc = rt__vd_set_backing_names(vd, name, format);
    if (rc != RT_OK)
        return rc;
    if (vd->no_backing) {
        vd->backing_unopened = true;
        return RT_OK;
    }
    if (!vd->allow_backing)
        return rt__vd_fail(err, RT_ERR_ACCESS_DENIED,
                           "the image refers to backing file '%s', and following file "
                           "references was not allowed",
                           name);
    return rt__vd_open_reference(vd, name, format, &vd->backing, err);
}

/* The size of the backing file a new image names, which it takes by default. */
static int backing_size(const char *path, rt_vd_create_opts_t *shape, rt_vd_error_t *err)
{
    const char *name = shape->backing_file;
    char *full = path_beside(path, name);
    if (full == NULL)
        return RT_ERR_NO_MEMORY;
    rt_vd_t backing;
    rt_vd_error_t inner;
    int rc = rt_vd_open(&backing, full, shape->backing_format,
                        RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING, &inner);
    if (rc == RT_OK) {
        shape->size = backing->size;
        rt_vd_close(backing);
    } else {
        rt__vd_fail(err, rc, "backing file %.100s: %.140s", full, inner.msg);
    }
    free(full);
    return rc;
}

int rt__vd_check_create(const struct vd_driver *driver, const rt_vd_create_opts_t *shape,
                        rt_vd_error_t *err)
{
    if (shape->flags & ~RT_VD_CREATE_STATIC)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "unknown create flag 0x%x",
                           shape->flags & ~RT_VD_CREATE_STATIC);
    if (!(driver->caps & VD_CAP_CREATE))
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "%s images cannot be created here",
                           driver->name);
    if ((shape->backing_file != NULL || shape->backing_format != NULL) &&
        !(driver->caps & VD_CAP_BACKING))
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "%s images have no backing file",
                           driver->name);
    if (shape->version != 0 && !(driver->caps & VD_CAP_VERSION))
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "%s images have no version",
                           driver->name);
    int rc = check_options(driver, driver->create_options, shape->options, err);
    if (rc != RT_OK)
        return rc;
    if (shape->backing_format != NULL && rt__vd_driver_find(shape->backing_format) == NULL)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "unknown backing file format '%.64s'",
                           shape->backing_format);
    return RT_OK;
}

int rt_vd_create(const char *path, const char *format, const rt_vd_create_opts_t *opts,
                 rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (path == NULL || format == NULL || opts == NULL)
        return RT_ERR_INVALID_POINTER;
    const struct vd_driver *driver = rt__vd_driver_find(format);
    if (driver == NULL)
        return rt__vd_fail(err, RT_ERR_VD_UNKNOWN_FORMAT, "unknown image format '%s'", format);
    rt_vd_create_opts_t shape = {0};
    size_t known = opts->struct_size != 0 && opts->struct_size < sizeof(shape) ? opts->struct_size
                                                                              : sizeof(shape);
    memcpy(&shape, opts, known);
    shape.struct_size = sizeof(shape);
    int orc = rt__vd_check_create(driver, &shape, err);
    if (orc != RT_OK)
        return orc;
    if (shape.size == 0 && shape.backing_file != NULL) {
        int rc = backing_size(path, &shape, err);
        if (rc != RT_OK)
            return rc;
    }
    /* Without a backing file a size of 0 means an empty disk, as in qemu-img. */
    if (shape.size % 512 != 0 || shape.size > INT64_MAX)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "size %llu is not a multiple of 512 below 2^63",
                           (unsigned long long)shape.size);
    rt_file_t file = RT_FILE_NIL;
    int rc = rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE, 0644);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "%s: %s", path, rt_strerror(rc));
    rc = driver->create(file, &shape, err);
    if (rc == RT_OK)
        rc = rt_file_flush(file);
    int close_rc = rt_file_close(file);
    if (rc == RT_OK)
        rc = close_rc;
    if (rc != RT_OK) {
        unlink(path);
        if (err != NULL && err->msg[0] == '\0')
            rt__vd_fail(err, rc, "%s: %s", path, rt_strerror(rc));
    }
    return rc;
}

int rt_vd_close(rt_vd_t vd)
{
    if (vd == NULL)
        return RT_OK;
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    int rc = rt__vd_queue_ensure_idle(vd);
    if (rc != RT_OK)
        return RT_ERR_AIO_BUSY;
    if (!vd->read_only)
        rc = rt__vd_sync_io(vd, VD_IO_FLUSH, 0, NULL, 0, 0);
    rt__vd_queue_release_sync(vd);
    vd->driver->close(vd);
    rt_vd_close(vd->backing);
    free(vd->backing_name);
    free(vd->backing_format);
    free(vd->path);
    int added_rc = close_added_files(vd);
    int close_rc = rt_file_close(vd->file);
    if (rc == RT_OK)
        rc = added_rc != RT_OK ? added_rc : close_rc;
    vd->magic = RT__MAGIC_DEAD;
    rt__handle_free(&vd_pool, vd);
    return rc;
}

/* ---------------------------------------------------------------------------------- */
/* Synchronous I/O. */

static int check_range(rt_vd_t vd, uint64_t off, uint64_t len)
{
    if (off > vd->size || len > vd->size - off)
        return RT_ERR_OUT_OF_RANGE;
    return RT_OK;
}

static int check_iov(const rt_iovec_t *iov, unsigned iovcnt, uint64_t *total)
{
    if (iovcnt > MAX_IOV)
        return RT_ERR_INVALID_PARAMETER;
    if (iov == NULL && iovcnt > 0)
        return RT_ERR_INVALID_POINTER;
    uint64_t sum = 0;
    for (unsigned i = 0; i < iovcnt; i++) {
        if (iov[i].base == NULL && iov[i].len > 0)
            return RT_ERR_INVALID_POINTER;
        if (iov[i].len > INT64_MAX - sum)
            return RT_ERR_OUT_OF_RANGE;
        sum += iov[i].len;
    }
    *total = sum;
    return RT_OK;
}

/* Shared by the synchronous and asynchronous entries: handle, direction, iov, range. */
int rt__vd_check_request(rt_vd_t vd, int kind, uint64_t off, const rt_iovec_t *iov,
                         unsigned iovcnt, uint64_t *total)
{
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    int rc = check_iov(iov, iovcnt, total);
    if (rc != RT_OK)
        return rc;
    if (vd->lost_state != RT_OK)
        return vd->lost_state;
    if (kind == VD_IO_WRITE && vd->read_only)
        return RT_ERR_VD_READ_ONLY;
    /* What the backing file holds is unknown (a flush needs none of it). */
    if (vd->backing_unopened && kind != VD_IO_FLUSH)
        return RT_ERR_ACCESS_DENIED;
    return check_range(vd, off, *total);
}

int rt__vd_check_zero(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t flags)
{
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if ((flags & ~RT_VD_ZERO_MAY_UNMAP) != 0)
        return RT_ERR_INVALID_PARAMETER;
    if (vd->read_only)
        return RT_ERR_VD_READ_ONLY;
    if (vd->lost_state != RT_OK)
        return vd->lost_state;
    if (vd->backing_unopened)
        return RT_ERR_ACCESS_DENIED; /* a partial unit's old contents are unknown */
    return check_range(vd, off, len);
}

int rt__vd_begin_write(rt_vd_t vd)
{
    if (vd->write_begun || vd->driver->begin_write == NULL)
        return RT_OK;
    int rc = vd->driver->begin_write(vd);
    if (rc == RT_OK)
        vd->write_begun = true;
    return rc;
}

static int sync_rw(rt_vd_t vd, int kind, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt,
                   uint32_t flags)
{
    uint64_t total = 0;
    int rc = rt__vd_check_request(vd, kind, off, iov, iovcnt, &total);
    if (rc != RT_OK)
        return rc;
    if ((flags & ~(kind == VD_IO_WRITE ? RT_VD_WRITE_FUA : 0u)) != 0)
        return RT_ERR_INVALID_PARAMETER;
    if (total == 0)
        return RT_OK;
    if (kind == VD_IO_WRITE && (rc = rt__vd_begin_write(vd)) != RT_OK)
        return rc;
    return rt__vd_sync_io(vd, kind, off, iov, iovcnt, flags);
}

int rt_vd_read(rt_vd_t vd, uint64_t off, void *buf, size_t len)
{
    rt_iovec_t iov = {buf, len};
    return sync_rw(vd, VD_IO_READ, off, &iov, 1, 0);
}

int rt_vd_write(rt_vd_t vd, uint64_t off, const void *buf, size_t len)
{
    rt_iovec_t iov = {(void *)buf, len};
    return sync_rw(vd, VD_IO_WRITE, off, &iov, 1, 0);
}

int rt_vd_readv(rt_vd_t vd, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt)
{
    return sync_rw(vd, VD_IO_READ, off, iov, iovcnt, 0);
}

int rt_vd_writev(rt_vd_t vd, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt)
{
    return sync_rw(vd, VD_IO_WRITE, off, iov, iovcnt, 0);
}

int rt_vd_writev_flags(rt_vd_t vd, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt,
                       uint32_t flags)
{
    return sync_rw(vd, VD_IO_WRITE, off, iov, iovcnt, flags);
}

int rt_vd_flush(rt_vd_t vd)
{
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if (vd->read_only)
        return RT_OK;
    return rt__vd_sync_io(vd, VD_IO_FLUSH, 0, NULL, 0, 0);
}

static int sync_zero(rt_vd_t vd, int kind, uint64_t off, uint64_t len, uint32_t flags)
{
    int rc = rt__vd_check_zero(vd, off, len, flags);
    if (rc != RT_OK || len == 0)
        return rc;
    if ((rc = rt__vd_begin_write(vd)) != RT_OK)
        return rc;
    return rt__vd_sync_zero(vd, kind, off, len, flags);
}

int rt_vd_write_zeroes(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t flags)
{
    return sync_zero(vd, VD_IO_ZERO, off, len, flags);
}

int rt_vd_discard(rt_vd_t vd, uint64_t off, uint64_t len)
{
    return sync_zero(vd, VD_IO_DISCARD, off, len, 0);
}

int rt_vd_write_compressed(rt_vd_t vd, uint64_t off, const void *buf, size_t len)
{
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if (buf == NULL)
        return RT_ERR_INVALID_POINTER;
    if (vd->read_only)
        return RT_ERR_VD_READ_ONLY;
    if (!(vd->driver->caps & VD_CAP_COMPRESSED_WRITE))
        return RT_ERR_NOT_SUPPORTED;
    if (rt__vd_queue_ensure_idle(vd) != RT_OK)
        return RT_ERR_BUSY;
    if (off >= vd->size || len > vd->size - off)
        return RT_ERR_OUT_OF_RANGE;
    uint64_t unit = vd->alloc_unit;
    uint64_t whole = vd->size - off < unit ? vd->size - off : unit;
    if (off % unit != 0 || len != whole)
        return RT_ERR_INVALID_PARAMETER;
    int rc = rt__vd_begin_write(vd);
    if (rc != RT_OK)
        return rc;
    uint8_t *padded = calloc(1, unit);
    if (padded == NULL)
        return RT_ERR_NO_MEMORY;
    memcpy(padded, buf, len);
    rc = vd->driver->write_compressed(vd, off, padded);
    free(padded);
    if (rc == 1)
        rc = rt_vd_write(vd, off, buf, len);
    return rc;
}

/* ---------------------------------------------------------------------------------- */
/* Inspection. */

int rt_vd_get_info(rt_vd_t vd, rt_vd_info_t *info)
{
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if (info == NULL)
        return RT_ERR_INVALID_POINTER;
    memset(info, 0, sizeof(*info));
    info->format = vd->driver->name;
    info->virtual_size = vd->size;
    info->read_only = vd->read_only;
    struct stat st;
    if (fstat((int)rt_file_to_native(vd->file), &st) != 0)
        return RT_ERR_IO;
    info->file_allocated = (uint64_t)st.st_blocks * 512u;
    info->backing_file = vd->backing_name;
    info->backing_format = vd->backing_format;
    info->backing_unopened = vd->backing_unopened;
    vd->driver->info(vd, info);
    return RT_OK;
}

int rt__vd_map_status(rt_vd_t vd, uint64_t off, uint64_t len, rt_vd_extent_t *ext)
{
    struct vd_map map = {0};
    int rc = vd->driver->map(vd, off, len, &map, NULL);
    if (rc != RT_OK)
        return rc;
    ext->offset = off;
    ext->length = map.length < len ? map.length : len;
    ext->host_offset = UINT64_MAX;
    ext->depth = 0;
    switch (map.kind) {
    case VD_MAP_DATA:
        ext->flags = RT_VD_EXTENT_DATA | RT_VD_EXTENT_ALLOCATED;
        ext->host_offset = map.host_off;
        break;
    case VD_MAP_COMPRESSED:
        ext->flags = RT_VD_EXTENT_DATA | RT_VD_EXTENT_ALLOCATED | RT_VD_EXTENT_COMPRESSED;
        break;
    case VD_MAP_ZERO:
        ext->flags = RT_VD_EXTENT_ZERO | RT_VD_EXTENT_ALLOCATED;
        break;
    case VD_MAP_UNALLOCATED:
        ext->flags = RT_VD_EXTENT_ZERO;
        break;
    }
    return RT_OK;
}

const char *rt_vd_chain_path(rt_vd_t vd, uint32_t depth)
{
    if (!rt__vd_live(vd))
        return NULL;
    for (; depth > 0 && vd != RT_VD_NIL; depth--)
        vd = vd->backing;
    return vd != RT_VD_NIL ? vd->path : NULL;
}

int rt_vd_block_status(rt_vd_t vd, uint64_t off, uint64_t len, rt_vd_extent_t *ext)
{
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if (ext == NULL)
        return RT_ERR_INVALID_POINTER;
    if (vd->lost_state != RT_OK)
        return vd->lost_state;
    if (vd->backing_unopened)
        return RT_ERR_ACCESS_DENIED;
    if (off >= vd->size || len == 0)
        return RT_ERR_OUT_OF_RANGE;
    if (len > vd->size - off)
        len = vd->size - off;
    /* Every field defined, whatever the driver fills in. */
    memset(ext, 0, sizeof(*ext));
    ext->host_offset = UINT64_MAX;
    int rc = vd->driver->block_status != NULL ? vd->driver->block_status(vd, off, len, ext)
                                              : rt__vd_map_status(vd, off, len, ext);
    if (rc != RT_OK || (ext->flags & RT_VD_EXTENT_ALLOCATED) || vd->backing == NULL)
        return rc;
    /* Unallocated here: the backing file answers, as far as it reaches. */
    if (off >= vd->backing->size) {
        ext->depth = 1;
        return RT_OK;
    }
    uint64_t run = ext->length;
    rc = rt_vd_block_status(vd->backing, off, run, ext);
    ext->depth++;
    return rc;
}

int rt__vd_ready_to_change(rt_vd_t vd, rt_vd_error_t *err)
{
    if (vd->read_only)
        return RT_ERR_VD_READ_ONLY;
    if (rt__vd_queue_ensure_idle(vd) != RT_OK)
        return RT_ERR_BUSY;
    if (vd->poisoned != RT_OK)
        return rt__vd_fail(err, vd->poisoned, "an earlier flush of the image failed");
    return RT_OK;
}

int rt__vd_extent_at(rt_vd_t vd, uint64_t off, rt_vd_extent_t *ext)
{
    int rc = rt_vd_block_status(vd, off, vd->size - off, ext);
    if (rc == RT_OK && ext->length == 0)
        rc = RT_ERR_VD_CORRUPT; /* a walk over the disk would never end */
    return rc;
}

int rt_vd_check(rt_vd_t vd, uint32_t flags, rt_vd_check_result_t *res)
{
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if (res == NULL)
        return RT_ERR_INVALID_POINTER;
    if (flags & ~RT_VD_CHECK_REPAIR_LEAKS)
        return RT_ERR_INVALID_PARAMETER;
    if ((flags & RT_VD_CHECK_REPAIR_LEAKS) && vd->read_only)
        return RT_ERR_VD_READ_ONLY;
    if (rt__vd_queue_ensure_idle(vd) != RT_OK)
        return RT_ERR_BUSY;
    memset(res, 0, sizeof(*res));
    /* Commit first, so the check sees what the image will look like after a close. */
    if (!vd->read_only) {
        int rc = rt__vd_sync_io(vd, VD_IO_FLUSH, 0, NULL, 0, 0);
        if (rc != RT_OK)
            return rc;
    }
    if (!(vd->driver->caps & VD_CAP_CHECK))
        return RT_ERR_NOT_SUPPORTED;
    return vd->driver->check(vd, flags, res);
}
