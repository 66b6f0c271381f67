/*
 * What the VD test programs share beyond tst_common.h: opening an image with the
 * library's message shown on failure, and holding an image busy (one queued read
 * outstanding) to test the calls that need it idle.  Header-only, like tst_common.h.
 */
#ifndef TST_VD_HELPERS_H
#define TST_VD_HELPERS_H

#include <rt/vd.h>

#include "tst_common.h"

/* Opens @a path as @a format with @a flags, or ends the test (showing why). */
static inline rt_vd_t tst_vd_open(const char *path, const char *format, uint32_t flags)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, path, format, flags, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  open %s: %s", path, err.msg);
    TST_RC_FATAL(rc, RT_OK);
    return vd;
}

/* An image held busy: a queued read of its first sector, not yet run. */
struct tst_busy {
    rt_vd_queue_t queue;
    int status; /* 1 until the read completes */
    uint8_t sector[512];
};

static inline void tst_busy_done(void *user, int status)
{
    *(int *)user = status;
}

static inline void tst_busy_begin(struct tst_busy *b, rt_vd_t vd)
{
    TST_RC_FATAL(rt_vd_queue_create(&b->queue, 4), RT_OK);
    rt_iovec_t iov = {b->sector, sizeof b->sector};
    b->status = 1;
    TST_RC(rt_vd_queue_read(b->queue, vd, 0, &iov, 1, tst_busy_done, &b->status), RT_OK);
}

/* Runs the read to its end and drops the queue: the image is idle again. */
static inline void tst_busy_end(struct tst_busy *b)
{
    while (b->status == 1)
        TST_RC(rt_vd_queue_run(b->queue, 1, 1000, NULL), RT_OK);
    TST_RC(rt_vd_queue_destroy(b->queue), RT_OK);
}

#endif /* TST_VD_HELPERS_H */
