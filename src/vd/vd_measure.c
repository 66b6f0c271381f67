/*
 * Measure: how large a new image would be (qemu-img measure).  The layer checks the
 * format and options as rt_vd_create() would and counts the source's data in the new
 * image's units; the driver turns that into file sizes.
 *
 * The count follows qemu-img's: every range the source's chain reads as data (zero
 * ranges need nothing) is rounded out to whole units of the new image, each unit
 * counted once.
 */
#include "config.h"

#include "vd/vd_internal.h"

/* Bytes of whole @a unit units that the data ranges of @a source touch. */
static int data_in_units(rt_vd_t source, uint64_t unit, uint64_t *data)
{
    *data = 0;
    for (uint64_t off = 0; off < source->size;) {
        rt_vd_extent_t ext;
        int rc = rt__vd_extent_at(source, off, &ext);
        if (rc != RT_OK)
            return rc;
        if ((ext.flags & RT_VD_EXTENT_ZERO) || !(ext.flags & RT_VD_EXTENT_DATA)) {
            off += ext.length;
            continue;
        }
        /* From the start of the unit the range begins in to the end of the unit it
         * ends in; the next range starts past it, so no unit counts twice. */
        uint64_t first = off - off % unit;
        uint64_t end = off + ext.length;
        end = end % unit ? end + (unit - end % unit) : end;
        *data += end - first;
        off = end;
    }
    return RT_OK;
}

int rt_vd_measure(const char *format, const rt_vd_create_opts_t *opts, rt_vd_t source,
                  rt_vd_measure_t *out, rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (format == NULL || opts == NULL || out == NULL)
        return RT_ERR_INVALID_POINTER;
    const struct vd_driver *driver = rt__vd_driver_find(format);
    if (driver == NULL)
        return rt__vd_fail(err, RT_ERR_VD_UNKNOWN_FORMAT, "unknown image format '%s'", format);
    if (driver->measure == NULL || driver->unit_of == NULL)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "%s images cannot be measured", driver->name);
    if (source != RT_VD_NIL && !rt__vd_live(source))
        return RT_ERR_INVALID_HANDLE;
    rt_vd_create_opts_t shape = *opts;
    shape.struct_size = sizeof(shape);
    int rc = rt__vd_check_create(driver, &shape, err);
    if (rc != RT_OK)
        return rc;
    if (shape.backing_file != NULL || shape.backing_format != NULL)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "a measured image has no backing file: it holds the whole copy");
    uint64_t data = 0;
    if (source != RT_VD_NIL) {
        shape.size = source->size % 512 ? source->size + (512 - source->size % 512) : source->size;
        if ((rc = data_in_units(source, driver->unit_of(&shape), &data)) != RT_OK)
            return rt__vd_fail(err, rc, "cannot read the source's allocation");
    }
    if (shape.size % 512 != 0 || shape.size > INT64_MAX)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "size %llu is not a multiple of 512 below 2^63",
                           (unsigned long long)shape.size);
    return driver->measure(&shape, data, out, err);
}
