/*
 * vd_io: applies a script of writes to an image through the VD layer, for the qemu-io
 * differential test (vd_qemu.sh).  It reads the subset of qemu-io's command language
 * the test generates, one command per line on standard input:
 *
 *   write -P PATTERN OFFSET LENGTH    fill with the byte PATTERN
 *   write -z OFFSET LENGTH            fill with zeros
 *   flush
 *
 * Usage: vd_io FORMAT IMAGE [--async] [--direct]
 * With --async the writes go through one queue, up to 16 in flight; a write that
 * overlaps one in flight waits for it first, since concurrent overlapping writes have
 * no defined order (on a real disk either).  With --direct the image is opened
 * uncached (O_DIRECT): unaligned writes go through the engine's bounce paths.
 * Exit status: 0 all applied, 1 a command failed, 2 bad usage or script.
 */
#include <rt/err.h>
#include <rt/vd.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IN_FLIGHT 16

struct pending_write {
    void *buf;
    uint64_t off, len;
    int status;
    bool done;
};

static void write_done(void *user, int status)
{
    struct pending_write *w = user;
    w->status = status;
    w->done = true;
}

static int drain(rt_vd_queue_t q, struct pending_write *ws, int *count)
{
    int failed = 0;
    for (int i = 0; i < *count; i++) {
        while (!ws[i].done) {
            int rc = rt_vd_queue_run(q, 1, RT_INDEFINITE_WAIT, NULL);
            if (rc != RT_OK) {
                fprintf(stderr, "vd_io: run: %s\n", rt_strerror(rc));
                return 1;
            }
        }
        if (ws[i].status != RT_OK) {
            fprintf(stderr, "vd_io: queued write: %s\n", rt_strerror(ws[i].status));
            failed = 1;
        }
        free(ws[i].buf);
    }
    *count = 0;
    return failed;
}

int main(int argc, char **argv)
{
    bool async = false, direct = false, usage = argc < 3;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--async") == 0)
            async = true;
        else if (strcmp(argv[i], "--direct") == 0)
            direct = true;
        else
            usage = true;
    }
    if (usage) {
        fprintf(stderr, "usage: vd_io FORMAT IMAGE [--async] [--direct] < script\n");
        return 2;
    }
    rt_vd_t vd;
    rt_vd_error_t err;
    uint32_t flags = RT_VD_OPEN_ALLOW_BACKING | (direct ? RT_VD_OPEN_NO_CACHE : 0);
    int rc = rt_vd_open(&vd, argv[2], argv[1], flags, &err);
    if (rc != RT_OK) {
        fprintf(stderr, "vd_io: %s: %s %s\n", argv[2], rt_strerror(rc), err.msg);
        return 1;
    }
    rt_vd_queue_t q = RT_VD_QUEUE_NIL;
    if (async && (rc = rt_vd_queue_create(&q, 8)) != RT_OK) {
        fprintf(stderr, "vd_io: queue: %s\n", rt_strerror(rc));
        return 1;
    }
    struct pending_write ws[MAX_IN_FLIGHT];
    int in_flight = 0;
    int status = 0;
    char line[256];
    unsigned lineno = 0;
    while (status == 0 && fgets(line, sizeof line, stdin) != NULL) {
        lineno++;
        unsigned pattern = 0;
        uint64_t off = 0, len = 0;
        bool zero = false;
        if (strcmp(line, "flush\n") == 0) {
            if (async)
                status = drain(q, ws, &in_flight);
            if (status == 0 && (rc = rt_vd_flush(vd)) != RT_OK) {
                fprintf(stderr, "vd_io: line %u: flush: %s\n", lineno, rt_strerror(rc));
                status = 1;
            }
            continue;
        }
        if (sscanf(line, "write -P %i %" SCNu64 " %" SCNu64, &pattern, &off, &len) != 3) {
            if (sscanf(line, "write -z %" SCNu64 " %" SCNu64, &off, &len) != 2) {
                fprintf(stderr, "vd_io: line %u: cannot parse: %s", lineno, line);
                status = 2;
                break;
            }
            zero = true;
        }
        void *buf = malloc(len ? len : 1);
        if (buf == NULL) {
            status = 1;
            break;
        }
        memset(buf, zero ? 0 : (int)pattern, len);
        if (!async) {
            rc = rt_vd_write(vd, off, buf, len);
            free(buf);
        } else {
            bool overlaps = false;
            for (int i = 0; i < in_flight; i++)
                overlaps |= ws[i].off < off + len && off < ws[i].off + ws[i].len;
            if ((in_flight == MAX_IN_FLIGHT || overlaps) &&
                (status = drain(q, ws, &in_flight)) != 0) {
                free(buf);
                break;
            }
            ws[in_flight] = (struct pending_write){buf, off, len, RT_OK, false};
            rt_iovec_t iov = {buf, len};
            rc = rt_vd_queue_write(q, vd, off, &iov, 1, write_done, &ws[in_flight]);
            if (rc == RT_OK)
                in_flight++;
            else
                free(buf);
        }
        if (rc != RT_OK) {
            fprintf(stderr, "vd_io: line %u: %s", lineno, line);
            fprintf(stderr, "vd_io: %s\n", rt_strerror(rc));
            status = 1;
        }
    }
    if (async) {
        if (drain(q, ws, &in_flight) != 0)
            status = 1;
        rt_vd_queue_destroy(q);
    }
    rc = rt_vd_close(vd);
    if (rc != RT_OK) {
        fprintf(stderr, "vd_io: close: %s\n", rt_strerror(rc));
        status = 1;
    }
    return status;
}
