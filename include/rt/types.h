/*
 * Basic types and handles of the vrt runtime.
 */
#ifndef RT_TYPES_H
#define RT_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An open file.  Created by rt_file_open(), freed by rt_file_close(). */
typedef struct rt_file *rt_file_t;
/** An asynchronous I/O context: where requests are submitted and reaped. */
typedef struct rt_aio_ctx *rt_aio_ctx_t;
/** One asynchronous I/O request, reusable any number of times. */
typedef struct rt_aio_req *rt_aio_req_t;

#define RT_FILE_NIL    ((rt_file_t)NULL)
#define RT_AIO_CTX_NIL ((rt_aio_ctx_t)NULL)
#define RT_AIO_REQ_NIL ((rt_aio_req_t)NULL)

/** One piece of a scatter/gather list; the same layout as struct iovec on POSIX. */
typedef struct rt_iovec {
    void *base;
    size_t len;
} rt_iovec_t;

/** A timeout, in milliseconds, that never runs out. */
#define RT_INDEFINITE_WAIT UINT32_MAX

#ifdef __cplusplus
}
#endif

#endif /* RT_TYPES_H */
