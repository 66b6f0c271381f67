/*
 * QCOW2: naming another backing file (rebase).  The name and its format live in cluster
 * 0: the header's backing offset and size, the backing-format extension, the name after
 * the extensions.  Cluster 0 is rebuilt in memory -- the header as it is, the new format
 * extension, every other extension byte for byte, the end marker, the name -- and
 * written back with the first sector last: the header fields that say where the name is
 * are in that sector, so a crash before it leaves the old header naming the old name
 * (intact unless the old extensions and name ran past the first sector, as QEMU's
 * rewrite of cluster 0 risks too), and after it the new one.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vd/qcow2.h"

#define FIRST_SECTOR 512u

/* Copies the extensions of cluster 0 as read (all but the backing format's) to @a out
 * from *@a at. */
static bool copy_extensions(const struct qcow2 *s, uint8_t *out, uint32_t *at)
{
    const uint8_t *h = s->header;
    uint64_t old_name = vd_be64(h + QH_BACKING_OFFSET);
    uint32_t end = old_name != 0 ? (uint32_t)old_name : s->cluster_size; /* checked at open */
    uint32_t from = s->header_bytes;
    while (from + 8 <= end) {
        uint32_t type = vd_be32(h + from), len = vd_be32(h + from + 4);
        if (type == QCOW2_EXT_END)
            break;
        if (type != QCOW2_EXT_BACKING_FMT &&
            !rt__qcow2_put_extension(out, s->cluster_size, at, type, h + from + 8, len))
            return false;
        from += 8u + ((len + 7u) & ~7u); /* open checked that it fits */
    }
    return true;
}

int rt__qcow2_set_backing(rt_vd_t vd, const char *name, const char *format, rt_vd_error_t *err)
{
    struct qcow2 *s = qcow2_of(vd);
    size_t name_len = name != NULL ? strlen(name) : 0;
    size_t format_len = format != NULL ? strlen(format) : 0;
    if (name_len > QCOW2_MAX_BACKING_NAME || format_len >= sizeof(s->backing_format))
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "a QCOW2 backing file name has at most %u bytes, its format %zu",
                           QCOW2_MAX_BACKING_NAME, sizeof(s->backing_format) - 1);
    uint8_t *out = calloc(1, s->cluster_size);
    if (out == NULL)
        return RT_ERR_NO_MEMORY;
    memcpy(out, s->header, s->header_bytes);
    uint32_t at = s->header_bytes;
    uint8_t end_marker[8] = {0};
    /* The backing format first, as QEMU orders them, then the others as they were. */
    bool fits = (format_len == 0 ||
                 rt__qcow2_put_extension(out, s->cluster_size, &at, QCOW2_EXT_BACKING_FMT, format,
                                         (uint32_t)format_len)) &&
                copy_extensions(s, out, &at) &&
                vd_inside(at, sizeof(end_marker) + name_len, s->cluster_size);
    int rc = RT_OK;
    if (!fits) {
        rc = rt__vd_fail(err, RT_ERR_OUT_OF_RANGE,
                         "the header extensions and a backing name of %zu bytes do not fit in "
                         "cluster 0 (%u bytes)",
                         name_len, s->cluster_size);
        goto out;
    }
    at += sizeof(end_marker); /* already zero */
    vd_put_be64(out + QH_BACKING_OFFSET, name_len > 0 ? at : 0);
    vd_put_be32(out + QH_BACKING_SIZE, (uint32_t)name_len);
    if (name_len > 0)
        memcpy(out + at, name, name_len);

    /* The rest of the cluster first, then the sector holding the header fields. */
    if (s->cluster_size > FIRST_SECTOR &&
        ((rc = rt__vd_meta_write(vd, FIRST_SECTOR, out + FIRST_SECTOR,
                                 s->cluster_size - FIRST_SECTOR)) != RT_OK ||
         (rc = rt__vd_meta_flush(vd)) != RT_OK)) {
        rt__vd_fail(err, rc, "cannot write the QCOW2 header extensions");
        goto out;
    }
    if ((rc = rt__vd_meta_write(vd, 0, out, FIRST_SECTOR)) != RT_OK ||
        (rc = rt__vd_meta_flush(vd)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot write the QCOW2 header");
        goto out;
    }
    memcpy(s->header, out, s->cluster_size);
    snprintf(s->backing_name, sizeof(s->backing_name), "%s", name != NULL ? name : "");
    snprintf(s->backing_format, sizeof(s->backing_format), "%s", format != NULL ? format : "");
out:
    free(out);
    return rc;
}
