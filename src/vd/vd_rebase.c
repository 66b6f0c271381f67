/*
 * Rebase: making an image name another backing file (or none), with what the guest
 * reads unchanged (safe) or only the name changed (RT_VD_REBASE_UNSAFE, qemu-img
 * rebase -u, for a backing file that moved).
 *
 * A safe rebase reads, wherever the image itself holds nothing, what the guest sees now
 * (through the old backing chain) and what the new backing file would show, and writes
 * the sectors where they differ into the image; then it flushes, and only then does the
 * driver switch the name.  A crash before the switch leaves the old chain with extra
 * copies of data it already showed; after it, the new chain showing the same disk.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "vd/vd_internal.h"

#define REBASE_FLAGS RT_VD_REBASE_UNSAFE
/* Bytes compared per step. */
#define CHUNK  (1u << 20)
#define SECTOR 512u

/* Reads @a len bytes at @a off of @a vd, zeros past its end (or for no image). */
static int read_or_zeros(rt_vd_t vd, uint64_t off, uint8_t *buf, size_t len)
{
    size_t have = 0;
    if (vd != RT_VD_NIL && off < vd->size)
        have = vd->size - off < len ? (size_t)(vd->size - off) : len;
    memset(buf + have, 0, len - have);
    return have > 0 ? rt_vd_read(vd, off, buf, have) : RT_OK;
}

/* Writes into @a vd the sectors of [off, off + len) where @a now and @a then differ. */
static int write_differences(rt_vd_t vd, uint64_t off, const uint8_t *now, const uint8_t *then,
                             size_t len)
{
    for (size_t at = 0; at < len;) {
        size_t step = len - at < SECTOR ? len - at : SECTOR;
        if (memcmp(now + at, then + at, step) == 0) {
            at += step;
            continue;
        }
        size_t end = at + step;
        while (end < len) {
            size_t next = len - end < SECTOR ? len - end : SECTOR;
            if (memcmp(now + end, then + end, next) == 0)
                break;
            end += next;
        }
        int rc = rt_vd_write(vd, off + at, now + at, end - at);
        if (rc != RT_OK)
            return rc;
        at = end;
    }
    return RT_OK;
}

/* Copies into @a vd what @a target (the new backing file, or NIL for none) would show
 * differently wherever @a vd holds nothing itself. */
static int keep_contents(rt_vd_t vd, rt_vd_t target, rt_vd_error_t *err)
{
    uint8_t *now = malloc(CHUNK), *then = malloc(CHUNK);
    int rc = now != NULL && then != NULL ? RT_OK : RT_ERR_NO_MEMORY;
    for (uint64_t off = 0; rc == RT_OK && off < vd->size;) {
        rt_vd_extent_t ext;
        if ((rc = rt__vd_extent_at(vd, off, &ext)) != RT_OK)
            break;
        if (ext.depth == 0 && (ext.flags & RT_VD_EXTENT_ALLOCATED)) {
            off += ext.length; /* the image's own: the backing file never shows there */
            continue;
        }
        size_t len = ext.length < CHUNK ? (size_t)ext.length : CHUNK;
        if ((rc = rt_vd_read(vd, off, now, len)) == RT_OK &&
            (rc = read_or_zeros(target, off, then, len)) == RT_OK)
            rc = write_differences(vd, off, now, then, len);
        off += len;
    }
    free(now);
    free(then);
    return rc != RT_OK ? rt__vd_fail(err, rc, "cannot copy what the new backing file would change")
                       : RT_OK;
}

int rt_vd_rebase(rt_vd_t vd, const char *backing, const char *backing_format, uint32_t flags,
                 rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if ((flags & ~REBASE_FLAGS) != 0)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "unknown rebase flag 0x%x",
                           flags & ~REBASE_FLAGS);
    if (backing != NULL && backing[0] == '\0')
        backing = NULL;
    if (backing == NULL && backing_format != NULL)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "a backing format without a backing file");
    if (backing_format != NULL && rt__vd_driver_find(backing_format) == NULL)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "unknown backing format '%s'",
                           backing_format);
    if (vd->driver->set_backing == NULL)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "%s images have no backing file",
                           vd->driver->name);
    int rc = rt__vd_ready_to_change(vd, err);
    if (rc != RT_OK)
        return rc;
    bool safe = !(flags & RT_VD_REBASE_UNSAFE);
    if (safe && vd->backing_unopened)
        return rt__vd_fail(err, RT_ERR_ACCESS_DENIED,
                           "the current backing file is not open, and a safe rebase reads it "
                           "(RT_VD_REBASE_UNSAFE changes only the name)");

    rt_vd_t target = RT_VD_NIL;
    if (backing != NULL && (safe || vd->allow_backing)) {
        rc = rt__vd_open_reference(vd, backing, backing_format, &target, err);
        if (rc != RT_OK && safe)
            return rc;
        if (rc != RT_OK)
            target = RT_VD_NIL; /* unsafe: the name may be of a file not there yet */
        /* A probed format is recorded, so that the next open need not probe. */
        if (target != RT_VD_NIL && backing_format == NULL)
            backing_format = target->driver->name;
        if (err != NULL)
            err->msg[0] = '\0';
        rc = RT_OK;
    }
    if (safe) {
        if ((rc = rt__vd_begin_write(vd)) != RT_OK)
            rt__vd_fail(err, rc, "cannot prepare the image for writing");
        else if ((rc = keep_contents(vd, target, err)) == RT_OK && (rc = rt_vd_flush(vd)) != RT_OK)
            rt__vd_fail(err, rc, "cannot flush the copied data");
    }
    if (rc == RT_OK)
        rc = vd->driver->set_backing(vd, backing, backing_format, err);
    if (rc == RT_OK)
        rc = rt__vd_set_backing_names(vd, backing, backing_format);
    if (rc != RT_OK) {
        if (target != RT_VD_NIL)
            rt_vd_close(target);
        return rc;
    }
    /* The handle goes on with the chain the image now names. */
    if (vd->backing != RT_VD_NIL)
        rt_vd_close(vd->backing);
    vd->backing = target;
    vd->backing_unopened = backing != NULL && target == RT_VD_NIL;
    return RT_OK;
}
