/*
 * Commit: the image's own data written into its backing file, then (unless kept) the
 * image emptied, so that it reads the same through the backing file.
 *
 * The backing file is reopened writable for the copy (the handle's read-only one is
 * closed first, so its shared lock does not stand in the way; another user of the
 * backing file holding it still does, as it should).  It is opened with the format the
 * image records for it: a writable open never probes, since a raw file whose bytes look
 * like another format's header would then be written as that format.  The copy is
 * flushed before the image is emptied: a crash in between leaves the image holding what
 * the backing file now holds too, which reads the same.  Then the handle reopens the
 * backing file read-only and goes on as before.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "vd/vd_internal.h"

#define COMMIT_FLAGS RT_VD_COMMIT_KEEP
#define CHUNK        (1u << 20)

/* Copies every range @a vd holds itself into @a base. */
static int copy_own_data(rt_vd_t vd, rt_vd_t base)
{
    uint8_t *buf = malloc(CHUNK);
    if (buf == NULL)
        return RT_ERR_NO_MEMORY;
    int rc = RT_OK;
    for (uint64_t off = 0; rc == RT_OK && off < vd->size;) {
        rt_vd_extent_t ext;
        if ((rc = rt__vd_extent_at(vd, off, &ext)) != RT_OK)
            break;
        if (ext.depth != 0 || !(ext.flags & RT_VD_EXTENT_ALLOCATED)) {
            off += ext.length;
            continue;
        }
        size_t len = ext.length < CHUNK ? (size_t)ext.length : CHUNK;
        if (!(ext.flags & RT_VD_EXTENT_DATA))
            rc = rt_vd_write_zeroes(base, off, len, RT_VD_ZERO_MAY_UNMAP);
        else if ((rc = rt_vd_read(vd, off, buf, len)) == RT_OK)
            rc = rt_vd_write(base, off, buf, len);
        off += len;
    }
    free(buf);
    return rc;
}

int rt_vd_commit(rt_vd_t vd, uint32_t flags, rt_vd_error_t *err)
{
    if (err != NULL)
        err->msg[0] = '\0';
    if (!rt__vd_live(vd))
        return RT_ERR_INVALID_HANDLE;
    if ((flags & ~COMMIT_FLAGS) != 0)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "unknown commit flag 0x%x",
                           flags & ~COMMIT_FLAGS);
    if (vd->backing_name == NULL)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "the image has no backing file");
    if (vd->backing_unopened || vd->backing == RT_VD_NIL)
        return rt__vd_fail(err, RT_ERR_ACCESS_DENIED,
                           "the image was opened without its backing file");
    if (vd->backing_format == NULL)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "the image does not record its backing file's format, and a "
                           "writable open never probes (record it with an unsafe rebase)");
    if (!(flags & RT_VD_COMMIT_KEEP) && vd->driver->make_empty == NULL)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "%s images cannot be emptied",
                           vd->driver->name);
    int rc = rt__vd_ready_to_change(vd, err);
    if (rc != RT_OK)
        return rc;
    if ((rc = rt_vd_flush(vd)) != RT_OK)
        return rt__vd_fail(err, rc, "cannot flush the image first");
    char *path = strdup(rt_vd_chain_path(vd, 1));
    if (path == NULL)
        return RT_ERR_NO_MEMORY;

    /* The backing file, writable: the read-only handle goes first (its lock). */
    rt_vd_close(vd->backing);
    vd->backing = RT_VD_NIL;
    rt_vd_t base = RT_VD_NIL;
    rt_vd_error_t inner;
    inner.msg[0] = '\0';
    uint32_t open_flags = RT_VD_OPEN_ALLOW_BACKING | (vd->no_cache ? RT_VD_OPEN_NO_CACHE : 0);
    rc = rt_vd_open(&base, path, vd->backing_format, open_flags, &inner);
    if (rc != RT_OK) {
        rt__vd_fail(err, rc, "cannot open the backing file %.100s for writing: %.140s", path,
                    inner.msg);
        goto reopen;
    }
    if (base->size < vd->size && (rc = rt_vd_resize(base, vd->size, 0, &inner)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot grow the backing file to the image's size: %.140s", inner.msg);
    } else if ((rc = copy_own_data(vd, base)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot copy the image's data into its backing file");
    } else if ((rc = rt_vd_flush(base)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot flush the backing file");
    }
    int closed = rt_vd_close(base);
    if (rc == RT_OK && closed != RT_OK)
        rc = rt__vd_fail(err, closed, "cannot close the backing file");
reopen:;
    /* Back to reading it, whatever happened; the image itself is unchanged so far. */
    rt_vd_error_t again;
    int reopened =
        rt__vd_open_reference(vd, vd->backing_name, vd->backing_format, &vd->backing, &again);
    if (reopened != RT_OK) {
        vd->backing = RT_VD_NIL;
        vd->backing_unopened = true; /* reads refused: what is beneath is unknown */
        if (rc == RT_OK)
            rc = rt__vd_fail(err, reopened,
                             "the data is committed, but reopening the backing "
                             "file failed: %.140s",
                             again.msg);
    }
    free(path);
    if (rc == RT_OK && !(flags & RT_VD_COMMIT_KEEP))
        rc = vd->driver->make_empty(vd, err);
    return rc;
}
