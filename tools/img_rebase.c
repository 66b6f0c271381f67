/*
 * vrt-img rebase: makes an image name another backing file (or none, with -b ""), with
 * qemu-img rebase's options: safe by default (what the guest reads stays the same), -u
 * to change only the name.
 *
 * Where it differs: the format must be given (-f), since rebase writes to the image;
 * and -u opens the image without its old backing file, so that a backing file that is
 * gone can be named again.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "img.h"

static const char usage_text[] =
    "Usage: " PROG " rebase -f FMT [-u] [-q] -b BACKING [-F BACKING_FMT] FILE\n"
    "Make FILE name BACKING as its backing file (or none, with -b \"\").\n"
    "\n"
    "  -f FMT          the image's format (qcow2); needed, since rebase writes to it\n"
    "  -b BACKING      the new backing file, stored as given (a relative name is\n"
    "                  relative to FILE's folder); \"\" for none\n"
    "  -F BACKING_FMT  its format, recorded in FILE; default: probed (safe mode) or\n"
    "                  not recorded (-u)\n"
    "  -u              unsafe: change only the name (for a backing file that moved);\n"
    "                  the old backing file is not opened and need not exist\n"
    "  -q, --quiet     print nothing but errors\n"
    "  -h, --help      print this text and exit\n"
    "\n"
    "Safe mode keeps what the guest reads: wherever FILE holds nothing itself, the\n"
    "sectors where the old and the new backing file differ are copied into FILE first\n"
    "(with -b \"\", all the old backing file shows).  Interrupted, FILE still names the\n"
    "old backing file and reads the same.\n";

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"backing", required_argument, NULL, 'b'},
    {"backing-format", required_argument, NULL, 'F'},
    {"unsafe", no_argument, NULL, 'u'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int img_rebase_main(int argc, char **argv)
{
    const char *cmd = argv[0], *format = NULL, *backing = NULL, *backing_format = NULL;
    bool unsafe = false;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:b:F:uqh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case 'b': backing = optarg; break;
        case 'F': backing_format = optarg; break;
        case 'u': unsafe = true; break;
        case 'q': break; /* nothing is printed on success anyway */
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (argc - optind != 1) {
        img_usage_error(cmd, argc - optind < 1 ? "FILE is expected" : "only FILE is expected");
        return IMG_EXIT_ERROR;
    }
    if (backing == NULL) {
        img_usage_error(cmd, "-b BACKING is needed (-b \"\" for none)");
        return IMG_EXIT_ERROR;
    }
    if (backing[0] == '\0' && backing_format != NULL) {
        img_usage_error(cmd, "-F needs a backing file (-b)");
        return IMG_EXIT_ERROR;
    }
    const char *path = argv[optind];
    rt_vd_t vd;
    if (RT_FAILURE(img_open(&vd, path, format, unsafe ? RT_VD_OPEN_NO_BACKING : 0, NULL)))
        return IMG_EXIT_ERROR;
    rt_vd_error_t err = {{0}};
    int rc = rt_vd_rebase(vd, backing, backing_format, unsafe ? RT_VD_REBASE_UNSAFE : 0, &err);
    if (RT_FAILURE(rc)) {
        char what[IMG_WHAT_MAX];
        snprintf(what, sizeof(what), "cannot rebase '%s' onto '%s'", path, backing);
        img_report(what, rc, &err);
        rt_vd_close(vd);
        return IMG_EXIT_ERROR;
    }
    return RT_FAILURE(img_close(vd, path)) ? IMG_EXIT_ERROR : IMG_EXIT_OK;
}
