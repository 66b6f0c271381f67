/*
 * qemu-img as a second opinion inside the CUnit programs: its check verdict on an
 * image, with its output shown when it disagrees.  Header-only, like tst_common.h.
 * It runs with -U: the tests ask it about images a vrt handle may still hold, and
 * qemu-img honours vrt's image locks as vrt honours its.
 */
#ifndef TST_QEMU_IMG_H
#define TST_QEMU_IMG_H

#include <sys/wait.h>

#include "tst_common.h"

#define QEMU_IMG "/usr/bin/qemu-img"

/* qemu-img check's verdict on @a path (format @a format): 1 clean, 0 not, -1 when
 * qemu-img is not installed. */
static inline int qemu_img_clean_as(const char *path, const char *format)
{
    if (access(QEMU_IMG, X_OK) != 0)
        return -1;
    char log[600], cmd[1400];
    tst_path(log, sizeof log, "qemu-img-check.log");
    snprintf(cmd, sizeof cmd, "%s check -U -f %s '%s' >'%s' 2>&1", QEMU_IMG, format, path, log);
    int status = system(cmd);
    if (status != 0) {
        fprintf(stderr, "\n  qemu-img check %s (status 0x%x) says:\n", path, status);
        snprintf(cmd, sizeof cmd, "sed 's/^/    /' '%s' >&2", log);
        if (system(cmd) != 0)
            fprintf(stderr, "    (cannot show %s)\n", log);
    }
    return status == 0;
}

/* qemu-img check's exit status on @a path (0 clean, 2 corrupt, 3 leaks only), quietly;
 * -1 when qemu-img is not installed. */
static inline int qemu_img_check_status(const char *path, const char *format)
{
    if (access(QEMU_IMG, X_OK) != 0)
        return -1;
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s check -U -f %s '%s' >/dev/null 2>&1", QEMU_IMG, format, path);
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

#endif /* TST_QEMU_IMG_H */
