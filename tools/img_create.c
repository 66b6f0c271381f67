/*
 * vrt-img create: a new, empty image of a given format and size.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "cli_common.h"
#include "img.h"

static const char usage_text[] =
    "Usage: " PROG " create [-f FMT] [-o OPTIONS] [-q] FILE SIZE\n"
    "Create an image that reads as zeros.  An existing FILE is never replaced.\n"
    "\n"
    "  -f FMT      raw (default) or vdi\n"
    "  -o OPTIONS  key=value[,key=value...]: static=on|off, preallocation=off|falloc|full,\n"
    "              block_size=SIZE; '-o help' lists them\n"
    "  -q          quiet: no \"Formatting ...\" line\n"
    "  -h, --help  print this text and exit\n"
    "\n"
    "SIZE is in bytes, optionally with a k, M, G or T suffix (powers of 1024), and a\n"
    "multiple of 512.\n";

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"options", required_argument, NULL, 'o'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int img_create_main(int argc, char **argv)
{
    const char *cmd = argv[0], *format = "raw", *path;
    rt_vd_create_opts_t opts = {0};
    rt_vd_error_t err = {{0}};
    char what[IMG_WHAT_MAX];
    bool quiet = false, help = false;
    int c, rc;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:o:qh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case 'o':
            if (!img_parse_create_options(cmd, optarg, &opts, &help))
                return IMG_EXIT_ERROR;
            break;
        case 'q': quiet = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (help) {
        img_print_create_options_help();
        return IMG_EXIT_OK;
    }
    if (argc - optind < 2) {
        img_usage_error(cmd, "FILE and SIZE are needed");
        return IMG_EXIT_ERROR;
    }
    if (argc - optind > 2) {
        img_usage_error(cmd, "unexpected argument '%s'", argv[optind + 2]);
        return IMG_EXIT_ERROR;
    }
    path = argv[optind];
    if (!img_parse_size_option(cmd, "SIZE", argv[optind + 1], &opts.size))
        return IMG_EXIT_ERROR;
    if (opts.size == 0 || opts.size % IMG_SECTOR) {
        img_usage_error(cmd, "SIZE: %" PRIu64 " is not a positive multiple of %u", opts.size,
                        IMG_SECTOR);
        return IMG_EXIT_ERROR;
    }
    if (!quiet) {
        printf("Formatting '%s', fmt=%s size=%" PRIu64 " static=%s", path, format, opts.size,
               opts.flags & RT_VD_CREATE_STATIC ? "on" : "off");
        if (opts.block_size)
            printf(" block_size=%" PRIu32, opts.block_size);
        printf("\n");
        fflush(stdout);
    }
    rc = rt_vd_create(path, format, &opts, &err);
    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "creating '%s'", path);
        img_report(what, rc, &err);
        return IMG_EXIT_ERROR;
    }
    return IMG_EXIT_OK;
}
