/*
 * The file handle, shared by the file module and the AIO layer.
 */
#ifndef RT_INTERNAL_FILE_H
#define RT_INTERNAL_FILE_H

#include <stdbool.h>
#include <stdint.h>

#include <rt/file.h>

#include "internal/magic.h"

struct rt_file {
    uint32_t magic; /* RT__MAGIC_FILE while open */
    uint32_t flags; /* the RT_FILE_* flags it was opened with */
    int fd;
    /* Which open this is: handle memory is recycled, so an AIO request bound to a file
     * keeps the handle and this number, and a submit after the file was closed (even
     * if the handle or the descriptor number was reused since) is refused. */
    uint64_t generation;
    struct rt_file *next_free; /* handle-pool link */
};



/** True when @a file points at a live file handle. */
static inline bool rt__file_is_live(const struct rt_file *file)
{
    return file != NULL && file->magic == RT__MAGIC_FILE;
}

/** True when @a file is still the open that had @a generation. */
static inline bool rt__file_is_generation(const struct rt_file *file, uint64_t generation)
{
    return rt__file_is_live(file) && file->generation == generation;
}

/**
 * rt_file_open() of an existing file that must be a regular file or a block device
 * (a disk image, or the file behind one).  The open does not wait: a FIFO opened for
 * reading would block until a writer came.  Anything else is closed again and refused.
 *
 * @param flags  as rt_file_open(), with the RT_FILE_OPEN disposition.
 * @param kind   optional; on a refusal, what the file is ("a directory", "a FIFO (named
 *               pipe)", "a socket", "a character device"), static storage; else NULL.
 * @retval RT_OK, the statuses of rt_file_open(), RT_ERR_IS_A_DIRECTORY, and
 *         RT_ERR_NOT_SUPPORTED for a FIFO, socket or character device.
 */
int rt__file_open_disk(rt_file_t *file, const char *path, uint32_t flags, const char **kind);

#endif /* RT_INTERNAL_FILE_H */
