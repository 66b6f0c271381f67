/*
 * raw: the guest disk is the file, byte for byte.  Any size; holes of a sparse file are
 * reported as zero ranges (SEEK_DATA/SEEK_HOLE) so convert and map skip them.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vd/vd_internal.h"

static int raw_probe(const struct vd_probe *p)
{
    return 1; /* anything is a raw image; every other driver outbids this */
}

static int raw_open(rt_vd_t vd, const char *const *options, rt_vd_error_t *err)
{
    uint64_t size = 0;
    int rc = rt_file_get_size(vd->file, &size);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot read the file size");
    if (vd->align > 1 && size % vd->align != 0)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "size %llu is not a multiple of %u, which uncached I/O needs; "
                           "open it cached",
                           (unsigned long long)size, vd->align);
    vd->size = size;
    vd->data_align = vd->align;
    return RT_OK;
}

static void raw_close(rt_vd_t vd)
{
}

static int raw_create(rt_file_t file, const rt_vd_create_opts_t *opts, rt_vd_error_t *err)
{
    if (opts->block_size != 0)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "raw images have no block size");
    int rc = rt_file_set_size(file, opts->size);
    if (rc != RT_OK || !(opts->flags & RT_VD_CREATE_STATIC))
        return rc;
    /* Static: reserve the blocks now, so later writes cannot run out of space. */
    int fd = (int)rt_file_to_native(file);
    int error = posix_fallocate(fd, 0, (off_t)opts->size);
    if (error != 0 && error != EOPNOTSUPP && error != EINVAL)
        return rt__vd_fail(err, rt_err_from_errno(error), "cannot reserve %llu bytes",
                           (unsigned long long)opts->size);
    return RT_OK;
}

static int raw_map(rt_vd_t vd, uint64_t off, uint64_t len, struct vd_map *map,
                   struct vd_load *load)
{
    (void)load;
    map->kind = VD_MAP_DATA;
    map->length = len;
    map->host_off = off;
    map->shared = false;
    return RT_OK;
}

/* Zeros and discards go to the file system: a punched hole when the range may be
 * deallocated (a discard, or zeros with RT_VD_ZERO_MAY_UNMAP), FALLOC_FL_ZERO_RANGE
 * when it must stay allocated.  Where neither works the engine writes the zeros, and
 * a discard does nothing. */
/* Block devices take fallocate() only in whole logical blocks (EINVAL otherwise); this
 * covers every logical block size Linux has. */
#define DEVICE_GRAIN 4096u

static int raw_zero(rt_vd_t vd, uint64_t off, uint64_t len, uint32_t how, uint64_t seq,
                    struct vd_zero *z)
{
    (void)seq;
    bool unmap = (how & (VD_ZERO_DISCARD | RT_VD_ZERO_MAY_UNMAP)) != 0;
    int rc = unmap ? rt__vd_punch(vd, off, len) : rt__vd_zero_range(vd, off, len);
    z->length = len;
    if (rc == RT_ERR_INVALID_PARAMETER && (off % DEVICE_GRAIN != 0 || len % DEVICE_GRAIN != 0)) {
        /* A block device: a partial block at either end goes back to the engine, which
         * writes zeros there (a discard leaves it); the whole blocks are done here. */
        uint64_t head = off % DEVICE_GRAIN ? DEVICE_GRAIN - off % DEVICE_GRAIN : 0;
        if (head > 0 || len < DEVICE_GRAIN) {
            z->length = head > 0 && head < len ? head : len;
            z->done = false;
            return RT_OK;
        }
        z->length = len - len % DEVICE_GRAIN;
        rc = unmap ? rt__vd_punch(vd, off, z->length) : rt__vd_zero_range(vd, off, z->length);
    }
    z->done = rc == RT_OK;
    return rc == RT_ERR_NOT_SUPPORTED ? RT_OK : rc;
}

/* The file's size is the disk's: a shrink cuts it, a grow extends it sparsely (the
 * file system returns zeros there).  A block device's size is the device's own. */
static int raw_resize(rt_vd_t vd, uint64_t size, rt_vd_error_t *err)
{
    struct stat st;
    if (fstat((int)rt_file_to_native(vd->file), &st) != 0)
        return rt__vd_fail(err, rt_err_from_errno(errno), "cannot inspect the image file");
    if (!S_ISREG(st.st_mode))
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "the image is a device, whose size only the device sets");
    if (vd->align > 1 && size % vd->align != 0)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "the new size must be a multiple of %u for uncached I/O", vd->align);
    int rc = rt_file_set_size(vd->file, size);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot set the file's size");
    return rt__vd_meta_flush(vd);
}

static void raw_info(rt_vd_t vd, rt_vd_info_t *info)
{
}

/* Data or hole at @a off, from the file system; a file system that cannot tell says
 * "data" for everything, which is never wrong, only slower to convert. */
static int raw_block_status(rt_vd_t vd, uint64_t off, uint64_t len, rt_vd_extent_t *ext)
{
    int fd = (int)rt_file_to_native(vd->file);
    uint64_t end = off + len;
    ext->offset = off;
    ext->depth = 0;
    off_t data = lseek(fd, (off_t)off, SEEK_DATA);
    if (data < 0 && errno != ENXIO) {
        ext->length = len;
        ext->flags = RT_VD_EXTENT_DATA | RT_VD_EXTENT_ALLOCATED;
        ext->host_offset = off;
        return RT_OK;
    }
    if (data < 0 || (uint64_t)data > off) {
        /* A hole up to the next data (or to the end of the file). */
        uint64_t next = data < 0 ? end : (uint64_t)data;
        ext->length = (next < end ? next : end) - off;
        ext->flags = RT_VD_EXTENT_ZERO | RT_VD_EXTENT_ALLOCATED;
        ext->host_offset = UINT64_MAX;
        return RT_OK;
    }
    off_t hole = lseek(fd, (off_t)off, SEEK_HOLE);
    uint64_t next = hole < 0 ? end : (uint64_t)hole;
    ext->length = (next < end && next > off ? next : end) - off;
    ext->flags = RT_VD_EXTENT_DATA | RT_VD_EXTENT_ALLOCATED;
    ext->host_offset = off;
    return RT_OK;
}

/* A raw image is its data: the file is the virtual size either way (qemu-img says so
 * too, although a sparse file takes less). */
static int raw_measure(const rt_vd_create_opts_t *opts, uint64_t data, rt_vd_measure_t *out,
                       rt_vd_error_t *err)
{
    (void)data, (void)err;
    out->required = out->fully_allocated = opts->size;
    return RT_OK;
}

static uint64_t raw_unit_of(const rt_vd_create_opts_t *opts)
{
    (void)opts;
    return 512;
}

const struct vd_driver rt__vd_raw_driver = {
    .name = "raw",
    .caps = VD_CAP_CREATE | VD_CAP_WRITE,
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .create = raw_create,
    .map = raw_map,
    .zero = raw_zero,
    .resize = raw_resize,
    .info = raw_info,
    .block_status = raw_block_status,
    .measure = raw_measure,
    .unit_of = raw_unit_of,
};
