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
    struct rt_file *next_free; /* handle-pool link */
};

/** True when @a file points at a live file handle. */
static inline bool rt__file_is_live(const struct rt_file *file)
{
    return file != NULL && file->magic == RT__MAGIC_FILE;
}

#endif /* RT_INTERNAL_FILE_H */
