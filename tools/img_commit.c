/*
 * vrt-img commit: writes an overlay's data into its backing file and empties the
 * overlay, with qemu-img commit's options (-d keeps the overlay's data) and its
 * "Image committed." on success.
 *
 * Where it differs: the format must be given (-f), since commit writes; the backing
 * file is written with the format the overlay records for it (never a probed one);
 * and only the immediate backing file is a target (-b names it or is refused).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "img.h"

static const char usage_text[] =
    "Usage: " PROG " commit -f FMT [-d] [-b BASE] [-q] FILE\n"
    "Write what FILE holds itself into its backing file, then empty FILE (it reads the\n"
    "same before and after; the backing file now reads as FILE did).\n"
    "\n"
    "  -f FMT          FILE's format (qcow2); needed, since commit writes\n"
    "  -d              keep FILE's data (do not empty it)\n"
    "  -b BASE         the image to commit into: only FILE's own backing file\n"
    "  -q, --quiet     print nothing but errors\n"
    "  -h, --help      print this text and exit\n"
    "\n"
    "The backing file is opened for writing with the format FILE records for it, and\n"
    "grown to FILE's size when smaller.  A backing file another program has open is\n"
    "refused by its lock.  Interrupted, FILE still reads the same.\n";

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Does @a base name the same file as @a path (both resolved)? */
static bool same_file(const char *base, const char *path)
{
    char a[PATH_MAX], b[PATH_MAX];
    return realpath(base, a) != NULL && realpath(path, b) != NULL && strcmp(a, b) == 0;
}

int img_commit_main(int argc, char **argv)
{
    const char *cmd = argv[0], *format = NULL, *base = NULL;
    bool quiet = false, keep = false;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:db:qh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case 'd': keep = true; break;
        case 'b': base = optarg; break;
        case 'q': quiet = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (argc - optind != 1) {
        img_usage_error(cmd, argc - optind < 1 ? "FILE is expected" : "only FILE is expected");
        return IMG_EXIT_ERROR;
    }
    const char *path = argv[optind];
    rt_vd_t vd;
    if (RT_FAILURE(img_open(&vd, path, format, 0, NULL)))
        return IMG_EXIT_ERROR;
    const char *backing = rt_vd_chain_path(vd, 1);
    if (base != NULL && (backing == NULL || !same_file(base, backing))) {
        fprintf(stderr,
                "%s: %s: '%s' is not its backing file (only the backing file itself "
                "can be committed into)\n",
                PROG, path, base);
        rt_vd_close(vd);
        return IMG_EXIT_ERROR;
    }
    rt_vd_error_t err = {{0}};
    int rc = rt_vd_commit(vd, keep ? RT_VD_COMMIT_KEEP : 0, &err);
    if (RT_FAILURE(rc)) {
        char what[IMG_WHAT_MAX];
        snprintf(what, sizeof(what), "cannot commit '%s'", path);
        img_report(what, rc, &err);
        rt_vd_close(vd);
        return IMG_EXIT_ERROR;
    }
    if (RT_FAILURE(img_close(vd, path)))
        return IMG_EXIT_ERROR;
    if (!quiet)
        printf("Image committed.\n");
    return IMG_EXIT_OK;
}
