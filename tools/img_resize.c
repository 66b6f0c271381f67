/*
 * vrt-img resize: changes an image's virtual size, with qemu-img resize's arguments
 * ("+1G" and "-512M" relative to the current size, --shrink to allow a smaller one)
 * and its "Image resized." on success.
 *
 * Where it differs, it is safer: a shrink past data the image holds is refused unless
 * --force is given too (qemu-img's --shrink drops it without looking), and the format
 * must be named (-f), since a writable open never trusts a probe.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "img.h"

enum { OPT_SHRINK = OPT_HELP + 1, OPT_PREALLOCATION, OPT_FORCE };

static const char usage_text[] =
    "Usage: " PROG " resize -f FMT [--shrink [--force]] [--preallocation=off] [-q] FILE\n"
    "                  [+|-]SIZE\n"
    "Change the virtual size of an image: to SIZE, or by SIZE with + or -.\n"
    "\n"
    "  -f FMT            the image's format (raw, vdi, qcow2); needed, since resize\n"
    "                    writes to the image\n"
    "      --shrink      allow a size smaller than the current one (raw and qcow2;\n"
    "                    VDI images cannot shrink)\n"
    "      --force       with --shrink: drop what the image holds past the new end;\n"
    "                    without it such a shrink is refused and nothing changes\n"
    "      --preallocation=off\n"
    "                    the only mode: the new range is allocated as it is written\n"
    "  -q, --quiet       print nothing on success\n"
    "  -h, --help        print this text and exit\n"
    "\n"
    "SIZE takes qemu-img's suffixes (b, k, M, G, T, P, E; 1.5G).  The new range reads\n"
    "as zeros, also in an overlay whose backing file is larger.\n";

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"shrink", no_argument, NULL, OPT_SHRINK},
    {"force", no_argument, NULL, OPT_FORCE},
    {"preallocation", required_argument, NULL, OPT_PREALLOCATION},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The size argument against the current size @a current: absolute, or +/- relative. */
static bool new_size(const char *cmd, const char *text, uint64_t current, uint64_t *size)
{
    char sign = text[0] == '+' || text[0] == '-' ? text[0] : 0;
    uint64_t value = 0;
    if (!img_parse_size(sign ? text + 1 : text, &value)) {
        img_usage_error(cmd, "'%s' is not a size", text);
        return false;
    }
    if (sign == '-' && value > current) {
        fprintf(stderr, "%s: cannot shrink by %" PRIu64 " bytes: the image has %" PRIu64 " bytes\n",
                PROG, value, current);
        return false;
    }
    if (sign == '+' && value > INT64_MAX - current) {
        fprintf(stderr, "%s: %" PRIu64 " + %" PRIu64 " bytes is too large\n", PROG, current, value);
        return false;
    }
    *size = sign == '+' ? current + value : sign == '-' ? current - value : value;
    return true;
}

int img_resize_main(int argc, char **argv)
{
    const char *cmd = argv[0], *format = NULL;
    uint32_t flags = 0;
    bool quiet = false, force = false;
    int c;

    /* The size comes last and may start with '-': take it before getopt sees it as an
     * option (what qemu-img does too). */
    const char *size_arg = NULL;
    if (argc >= 3 && argv[argc - 1][0] == '-' && argv[argc - 1][1] >= '0' &&
        argv[argc - 1][1] <= '9')
        size_arg = argv[--argc];
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:qh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case OPT_SHRINK: flags |= RT_VD_RESIZE_SHRINK; break;
        case OPT_FORCE: force = true; break;
        case OPT_PREALLOCATION:
            if (strcmp(optarg, "off")) {
                img_usage_error(cmd, "--preallocation=%s is not supported (only off)", optarg);
                return IMG_EXIT_ERROR;
            }
            break;
        case 'q': quiet = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    int want = size_arg != NULL ? 1 : 2;
    if (argc - optind != want) {
        img_usage_error(cmd, argc - optind < want ? "FILE and SIZE are expected"
                                                  : "only FILE and SIZE are expected");
        return IMG_EXIT_ERROR;
    }
    const char *path = argv[optind];
    if (size_arg == NULL)
        size_arg = argv[optind + 1];
    if (force && !(flags & RT_VD_RESIZE_SHRINK)) {
        img_usage_error(cmd, "--force only applies with --shrink");
        return IMG_EXIT_ERROR;
    }
    if (force)
        flags |= RT_VD_RESIZE_DISCARD_DATA;

    rt_vd_t vd;
    rt_vd_info_t info;
    if (RT_FAILURE(img_open_info(&vd, path, format, 0, &info)))
        return IMG_EXIT_ERROR;
    uint64_t size = 0;
    if (!new_size(cmd, size_arg, info.virtual_size, &size)) {
        rt_vd_close(vd);
        return IMG_EXIT_ERROR;
    }
    rt_vd_error_t err = {{0}};
    int rc = rt_vd_resize(vd, size, flags, &err);
    if (rc == RT_ERR_INVALID_PARAMETER && size < info.virtual_size &&
        !(flags & RT_VD_RESIZE_SHRINK)) {
        fprintf(stderr,
                "%s: %s is smaller than the current size (%" PRIu64 " bytes); use "
                "--shrink to shrink it\n",
                PROG, size_arg, info.virtual_size);
    } else if (rc == RT_ERR_NOT_PERMITTED) {
        fprintf(stderr, "%s: %s: %s; add --force to drop it\n", PROG, path, err.msg);
    } else if (RT_FAILURE(rc)) {
        char what[IMG_WHAT_MAX];
        snprintf(what, sizeof(what), "cannot resize '%s'", path);
        img_report(what, rc, &err);
    }
    if (RT_FAILURE(rc)) {
        rt_vd_close(vd);
        return IMG_EXIT_ERROR;
    }
    if (RT_FAILURE(img_close(vd, path)))
        return IMG_EXIT_ERROR;
    if (!quiet)
        printf("Image resized.\n");
    return IMG_EXIT_OK;
}
