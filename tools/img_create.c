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
    "Usage: " PROG " create [-f FMT] [-b BACKING [-F BACKING_FMT]] [-o OPTIONS] [-q] FILE [SIZE]\n"
    "Create an image that reads as zeros (or as its backing file).  An existing FILE is\n"
    "never replaced.\n"
    "\n"
    "  -f FMT          raw (default), vdi or qcow2\n"
    "  -b BACKING      qcow2: the backing file (-o backing_file=BACKING); a relative\n"
    "                  name is relative to FILE's directory\n"
    "  -F BACKING_FMT  the backing file's format, recorded in FILE (-o backing_fmt=)\n"
    "  -o OPTIONS      key=value[,key=value...]: static=on|off,\n"
    "                  preallocation=off|falloc|full, block_size=SIZE (alias\n"
    "                  cluster_size), compat=0.10|1.1, backing_file=NAME,\n"
    "                  backing_fmt=FMT; '-o help' lists them\n"
    "  -q              quiet: no \"Formatting ...\" line\n"
    "  -h, --help      print this text and exit\n"
    "\n"
    "SIZE is in bytes, optionally with a k, M, G or T suffix (powers of 1024), and a\n"
    "multiple of 512.  It may be left out when there is a backing file: the image then\n"
    "takes the backing file's size.\n";

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"backing", required_argument, NULL, 'b'},
    {"backing-format", required_argument, NULL, 'F'},
    {"options", required_argument, NULL, 'o'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* "Formatting ..." before the work, as qemu-img prints it, with the options set. */
static void print_formatting(const char *path, const char *format, const rt_vd_create_opts_t *opts)
{
    printf("Formatting '%s', fmt=%s", path, format);
    if (opts->size)
        printf(" size=%" PRIu64, opts->size);
    else
        printf(" size=(the backing file's)");
    printf(" static=%s", opts->flags & RT_VD_CREATE_STATIC ? "on" : "off");
    if (opts->block_size)
        printf(" block_size=%" PRIu32, opts->block_size);
    if (opts->version)
        printf(" compat=%s", opts->version == 2 ? "0.10" : "1.1");
    if (opts->backing_file)
        printf(" backing_file=%s", opts->backing_file);
    if (opts->backing_format)
        printf(" backing_fmt=%s", opts->backing_format);
    printf("\n");
    fflush(stdout);
}

/* Everything but freeing the names in @a opts; returns the exit status. */
static int create_image(int argc, char **argv, rt_vd_create_opts_t *opts)
{
    const char *cmd = argv[0], *format = "raw", *path;
    rt_vd_error_t err = {{0}};
    char what[IMG_WHAT_MAX];
    bool quiet = false, help = false;
    int c, rc;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:b:F:o:qh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case 'b':
            if (!img_set_create_name(cmd, "-b", optarg, &opts->backing_file))
                return IMG_EXIT_ERROR;
            break;
        case 'F':
            if (!img_set_create_name(cmd, "-F", optarg, &opts->backing_format))
                return IMG_EXIT_ERROR;
            break;
        case 'o':
            if (!img_parse_create_options(cmd, optarg, opts, &help))
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
    if (opts->backing_format && !opts->backing_file) {
        img_usage_error(cmd, "a backing format (-F, backing_fmt) needs a backing file (-b)");
        return IMG_EXIT_ERROR;
    }
    if (argc - optind < 1 || (argc - optind < 2 && !opts->backing_file)) {
        img_usage_error(cmd, "FILE and SIZE are needed (SIZE may be left out only with a "
                             "backing file)");
        return IMG_EXIT_ERROR;
    }
    if (argc - optind > 2) {
        img_usage_error(cmd, "unexpected argument '%s'", argv[optind + 2]);
        return IMG_EXIT_ERROR;
    }
    path = argv[optind];
    if (argc - optind == 2) {
        if (!img_parse_size_option(cmd, "SIZE", argv[optind + 1], &opts->size))
            return IMG_EXIT_ERROR;
        if (opts->size == 0 || opts->size % IMG_SECTOR) {
            img_usage_error(cmd, "SIZE: %" PRIu64 " is not a positive multiple of %u", opts->size,
                            IMG_SECTOR);
            return IMG_EXIT_ERROR;
        }
    }
    if (!quiet)
        print_formatting(path, format, opts);
    rc = rt_vd_create(path, format, opts, &err);
    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "creating '%s'", path);
        img_report(what, rc, &err);
        return IMG_EXIT_ERROR;
    }
    return IMG_EXIT_OK;
}

int img_create_main(int argc, char **argv)
{
    rt_vd_create_opts_t opts = {0};
    int status = create_image(argc, argv, &opts);

    img_free_create_names(&opts);
    return status;
}
