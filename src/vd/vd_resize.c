/*
 * Resize: the checks and stages every format shares, around the driver's resize().
 *
 * A shrink first proves (unless the caller allows losing data) that nothing this image
 * holds lies past the new end, then discards the whole units there so their space is
 * freed, commits, and only then lets the driver cut the size: a crash at any point
 * leaves the old size with the same guest data, or the new one.
 *
 * A grow must not make anything visible that the guest never wrote.  What could show
 * through: the tail of the old last unit past the old size (bytes a shrink left
 * behind), a backing file larger than the old size, and units the image still holds
 * past the old size (a discard that could not drop them, a map larger than its size).
 * All are zeroed, with the ordinary zero request, once the size has grown (as QEMU
 * does; the window of a crash between the two is documented at rt_vd_resize()).
 */
#include "config.h"

#include <inttypes.h>

#include "vd/vd_internal.h"

#define RESIZE_FLAGS (RT_VD_RESIZE_SHRINK | RT_VD_RESIZE_DISCARD_DATA)

/* The first range at or past @a from that this image (not its backing file) holds data
 * for, and how long it runs (*@a length): RT_OK with *@a found false when there is none. */
static int data_past(rt_vd_t vd, uint64_t from, bool *found, uint64_t *where, uint64_t *length)
{
    *found = false;
    for (uint64_t off = from; off < vd->size;) {
        rt_vd_extent_t ext = {0};
        uint64_t len = vd->size - off;
        int rc = vd->driver->block_status != NULL ? vd->driver->block_status(vd, off, len, &ext)
                                                  : rt__vd_map_status(vd, off, len, &ext);
        if (rc != RT_OK)
            return rc;
        if (ext.length == 0)
            return RT_ERR_VD_CORRUPT;
        if (ext.flags & RT_VD_EXTENT_DATA) {
            *found = true;
            *where = off;
            *length = ext.length < vd->size - off ? ext.length : vd->size - off;
            return RT_OK;
        }
        off += ext.length;
    }
    return RT_OK;
}

static uint64_t round_up(uint64_t value, uint64_t unit)
{
    return unit == 0 || value % unit == 0 ? value : value + (unit - value % unit);
}

static int shrink_prepare(rt_vd_t vd, uint64_t size, uint32_t flags, rt_vd_error_t *err)
{
    if (!(flags & RT_VD_RESIZE_SHRINK))
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "%" PRIu64 " is smaller than the virtual size %" PRIu64
                           "; shrinking must be asked for",
                           size, vd->size);
    if (!(flags & RT_VD_RESIZE_DISCARD_DATA)) {
        bool found = false;
        uint64_t where = 0, length = 0;
        int rc = data_past(vd, size, &found, &where, &length);
        if (rc != RT_OK)
            return rt__vd_fail(err, rc, "cannot tell what lies past the new end");
        if (found)
            return rt__vd_fail(err, RT_ERR_NOT_PERMITTED,
                               "the image holds data at offset %" PRIu64
                               ", past the new end %" PRIu64,
                               where, size);
    }
    /* The whole units past the new end go now, so their space is freed; the unit the
     * new end falls in keeps its bytes past it until a grow zeroes them. */
    uint64_t first = round_up(size, vd->alloc_unit);
    int rc = RT_OK;
    if (vd->alloc_unit != 0 && first < vd->size)
        rc = rt_vd_discard(vd, first, vd->size - first);
    if (rc == RT_OK)
        rc = rt_vd_flush(vd);
    return rc != RT_OK ? rt__vd_fail(err, rc, "cannot discard what lies past the new end") : RT_OK;
}

/* After a grow from @a old: zeros over what could show through (see the head). */
static int grow_finish(rt_vd_t vd, uint64_t old, rt_vd_error_t *err)
{
    uint64_t end = round_up(old, vd->alloc_unit);
    if (vd->backing != RT_VD_NIL && vd->backing->size > end)
        end = vd->backing->size;
    if (end > vd->size)
        end = vd->size;
    int rc = RT_OK;
    if (end > old)
        rc = rt_vd_write_zeroes(vd, old, end - old, 0);
    /* And whatever the image itself still holds further on: units a discard could not
     * drop (QCOW2 v2 over a backing file keeps them), map entries a header counted
     * past its old size. */
    for (uint64_t from = end; rc == RT_OK && from < vd->size;) {
        bool found = false;
        uint64_t where = 0, length = 0;
        if ((rc = data_past(vd, from, &found, &where, &length)) != RT_OK || !found)
            break;
        rc = rt_vd_write_zeroes(vd, where, length, 0);
        from = where + length;
    }
    if (rc == RT_OK)
        rc = rt_vd_flush(vd);
    return rc != RT_OK ? rt__vd_fail(err, rc, "the size grew, but zeroing the new range failed")
                       : RT_OK;
}

int rt_vd_resize(rt_vd_t vd, uint64_t size, uint32_t flags, rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if ((flags & ~RESIZE_FLAGS) != 0)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "unknown resize flag 0x%x",
                           flags & ~RESIZE_FLAGS);
    if (vd->read_only)
        return RT_ERR_VD_READ_ONLY;
    if (vd->backing_unopened)
        return RT_ERR_ACCESS_DENIED;
    if (vd->driver->resize == NULL)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "%s images cannot be resized",
                           vd->driver->name);
    if (rt__vd_queue_ensure_idle(vd) != RT_OK)
        return RT_ERR_BUSY;
    if (vd->poisoned != RT_OK)
        return rt__vd_fail(err, vd->poisoned, "an earlier flush of the image failed");
    if (size == vd->size)
        return RT_OK;
    if (size > INT64_MAX)
        return rt__vd_fail(err, RT_ERR_OUT_OF_RANGE, "%" PRIu64 " bytes is too large", size);
    int rc = rt__vd_begin_write(vd);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot prepare the image for writing");
    uint64_t old = vd->size;
    if (size < old && (rc = shrink_prepare(vd, size, flags, err)) != RT_OK)
        return rc;
    /* A grow too starts from committed metadata: a driver that writes tables anew (a
     * larger QCOW2 L1) copies what memory holds, which must not name tables that exist
     * only there when the header switches to it. */
    if (size > old && (rc = rt_vd_flush(vd)) != RT_OK)
        return rt__vd_fail(err, rc, "cannot flush the image first");
    if ((rc = vd->driver->resize(vd, size, err)) != RT_OK)
        return rc;
    vd->size = size;
    return size > old ? grow_finish(vd, old, err) : RT_OK;
}
