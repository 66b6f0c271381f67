/*
 * File surgery for the malformed-image tests: read a file whole, copy it, patch bytes
 * in place (big-endian fields too), cut it, and look for a word in an error message.  Header-only, like
 * tst_common.h; any failure of the test's own file handling ends the program.
 */
#ifndef TST_FILES_H
#define TST_FILES_H

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static inline void die(const char *what, const char *path)
{
    fprintf(stderr, "%s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

/* The whole file in a malloc'ed buffer; *size receives its length. */
static inline uint8_t *slurp(const char *path, uint64_t *size)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        die("cannot open", path);
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL)
        die("no memory for", path);
    if (pread(fd, buf, (size_t)st.st_size, 0) != st.st_size)
        die("cannot read", path);
    close(fd);
    *size = (uint64_t)st.st_size;
    return buf;
}

static inline void copy_file(const char *from, const char *to)
{
    uint64_t size = 0;
    uint8_t *buf = slurp(from, &size);
    int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || pwrite(fd, buf, (size_t)size, 0) != (ssize_t)size || close(fd) != 0)
        die("cannot write", to);
    free(buf);
}

static inline void patch(const char *path, uint64_t off, const void *bytes, size_t len)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || pwrite(fd, bytes, len, (off_t)off) != (ssize_t)len || close(fd) != 0)
        die("cannot patch", path);
}

static inline void resize(const char *path, uint64_t size)
{
    if (truncate(path, (off_t)size) != 0)
        die("cannot truncate", path);
}

/* Big-endian fields, in memory and in a file. */
static inline uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline uint64_t get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static inline void put_be(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

static inline void patch_be(const char *path, uint64_t off, uint64_t value, unsigned bytes)
{
    uint8_t be[8];
    put_be(be, value, bytes);
    patch(path, off, be, bytes);
}

static inline uint64_t read_be(const char *path, uint64_t off, unsigned bytes)
{
    uint8_t be[8];
    int fd = open(path, O_RDONLY);
    if (fd < 0 || pread(fd, be, bytes, (off_t)off) != (ssize_t)bytes)
        die("cannot read", path);
    close(fd);
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v = v << 8 | be[i];
    return v;
}

/* Does @a text contain @a word, ignoring case? */
static inline int mentions(const char *text, const char *word)
{
    size_t n = strlen(word);
    if (n == 0)
        return 1;
    for (; *text != '\0'; text++) {
        size_t i = 0;
        while (i < n && text[i] != '\0' &&
               tolower((unsigned char)text[i]) == tolower((unsigned char)word[i]))
            i++;
        if (i == n)
            return 1;
    }
    return 0;
}

#endif /* TST_FILES_H */
