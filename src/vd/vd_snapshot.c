/*
 * Internal snapshots: the checks every format shares, around the driver's snapshot
 * operations (only QCOW2 has them).
 *
 * The three that change the image run on an idle, writable handle after a flush, so
 * that the driver works on metadata that is all in the file: it changes the file in a
 * crash-safe order and then reads its state back as a fresh open would.
 */
#include "config.h"

#include <string.h>

#include "vd/vd_internal.h"

static int unsupported(rt_vd_t vd, rt_vd_error_t *err)
{
    return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "%s images have no internal snapshots",
                       vd->driver->name);
}

int rt_vd_snapshot_list(rt_vd_t vd, rt_vd_snapshot_t *out, uint32_t capacity, uint32_t *count,
                        rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if (count == NULL || (out == NULL && capacity > 0))
        return RT_ERR_INVALID_POINTER;
    *count = 0;
    if (vd->driver->snapshot_list == NULL)
        return unsupported(vd, err);
    if (rt__vd_queue_ensure_idle(vd) != RT_OK)
        return RT_ERR_BUSY;
    return vd->driver->snapshot_list(vd, out, capacity, count, err);
}

/* What create, apply and delete need: a live, writable, idle image of a format with
 * snapshots, whose every completed write is committed. */
static int prepare_change(rt_vd_t vd, const char *arg, rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if (arg == NULL)
        return RT_ERR_INVALID_POINTER;
    if (vd->driver->snapshot_create == NULL)
        return unsupported(vd, err);
    int rc = rt__vd_ready_to_change(vd, err);
    if (rc != RT_OK)
        return rc;
    rc = rt_vd_flush(vd);
    return rc != RT_OK ? rt__vd_fail(err, rc, "cannot flush the image first") : RT_OK;
}

int rt_vd_snapshot_create(rt_vd_t vd, const char *name, rt_vd_snapshot_t *created,
                          rt_vd_error_t *err)
{
    if (rt__vd_live(vd) && name != NULL &&
        (name[0] == '\0' || strlen(name) > RT_VD_SNAPSHOT_NAME_MAX)) {
        if (err != NULL)
            err->msg[0] = '\0';
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "a snapshot name must have 1 to %u bytes",
                           RT_VD_SNAPSHOT_NAME_MAX);
    }
    int rc = prepare_change(vd, name, err);
    return rc != RT_OK ? rc : vd->driver->snapshot_create(vd, name, created, err);
}

int rt_vd_snapshot_apply(rt_vd_t vd, const char *which, rt_vd_error_t *err)
{
    /* The guest's data changes: the driver makes what the format keeps beside it (dirty
     * bitmaps) invalid (rt__vd_begin_write) once the snapshot is found and the image
     * checked, so that a refused apply leaves them valid. */
    int rc = prepare_change(vd, which, err);
    return rc != RT_OK ? rc : vd->driver->snapshot_apply(vd, which, err);
}

int rt_vd_snapshot_delete(rt_vd_t vd, const char *which, rt_vd_error_t *err)
{
    int rc = prepare_change(vd, which, err);
    return rc != RT_OK ? rc : vd->driver->snapshot_delete(vd, which, err);
}
