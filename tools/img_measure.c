/*
 * vrt-img measure: how large a new image would be, for a size or for a copy of an
 * image, with qemu-img measure's options, numbers and output (text and JSON).
 *
 * "bitmaps size" is printed where qemu-img prints it (a QCOW2 version 3 image measured
 * for a QCOW2 source) and is 0: convert copies no bitmaps.
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

static const char usage_text[] =
    "Usage: " PROG " measure [--output=human|json] [-O FMT] [-o OPTIONS]\n"
    "                        (--size SIZE | [-f FMT] [-U] FILE)\n"
    "How many bytes of host file a new image of format FMT (raw or qcow2; default raw)\n"
    "would take: for a virtual size, or holding a copy of FILE (what its backing chain\n"
    "reads as data, in the new image's clusters).\n"
    "\n"
    "  -O FMT          the new image's format\n"
    "  -o OPTIONS      its create options, as for create (cluster_size, compat,\n"
    "                  refcount_bits, preallocation)\n"
    "      --size SIZE the virtual size, instead of FILE\n"
    "  -f FMT          FILE's format; default: probe it (a FILE with a backing file\n"
    "                  needs -f)\n"
    "  -U, --force-share  read FILE even while another program has it open for writing\n"
    "      --output=OFMT  human (default) or json (qemu-img's keys: required,\n"
    "                  fully-allocated, bitmaps)\n"
    "  -h, --help      print this text and exit\n"
    "\n"
    "required size: the file holding FILE's data (with the metadata a fully allocated\n"
    "image has: an overestimate, as qemu-img's); fully allocated size: every cluster.\n";

enum { OPT_SIZE = OPT_HELP + 1 };

static const struct option long_options[] = {
    {"size", required_argument, NULL, OPT_SIZE},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"force-share", no_argument, NULL, 'U'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Everything but freeing the names in @a opts; returns the exit status. */
static int measure(int argc, char **argv, rt_vd_create_opts_t *opts)
{
    const char *cmd = argv[0], *format = NULL, *target = "raw";
    enum img_output output = OUTPUT_HUMAN;
    bool help = false, have_size = false;
    uint64_t size = 0;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:O:o:Uh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case 'O': target = optarg; break;
        case 'o':
            if (!img_parse_create_options(cmd, optarg, opts, &help))
                return IMG_EXIT_ERROR;
            break;
        case OPT_SIZE:
            if (!img_parse_size_option(cmd, "--size", optarg, &size))
                return IMG_EXIT_ERROR;
            have_size = true;
            break;
        case OPT_OUTPUT:
            if (!img_parse_output(cmd, optarg, &output))
                return IMG_EXIT_ERROR;
            break;
        case 'U': img_force_share = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (help) {
        img_print_create_options_help();
        return IMG_EXIT_OK;
    }
    int files = argc - optind;
    if (have_size == (files == 1) || files > 1) {
        img_usage_error(cmd, "either --size SIZE or FILE is expected");
        return IMG_EXIT_ERROR;
    }
    rt_vd_t source = RT_VD_NIL;
    rt_vd_info_t info = {0};
    if (files == 1 &&
        RT_FAILURE(img_open_info(&source, argv[optind], format, RT_VD_OPEN_READ_ONLY, &info)))
        return IMG_EXIT_ERROR;
    /* A size qemu-img would round up to a sector, as create does. */
    opts->size = (size + IMG_SECTOR - 1) / IMG_SECTOR * IMG_SECTOR;
    rt_vd_measure_t m;
    rt_vd_error_t err = {{0}};
    int rc = rt_vd_measure(target, opts, source, &m, &err);
    if (source != RT_VD_NIL)
        rt_vd_close(source);
    if (RT_FAILURE(rc)) {
        char what[IMG_WHAT_MAX];
        snprintf(what, sizeof(what), "cannot measure a %s image", target);
        img_report(what, rc, &err);
        return IMG_EXIT_ERROR;
    }
    bool bitmaps = source != RT_VD_NIL && !strcmp(target, "qcow2") && opts->version != 2 &&
                   !strcmp(info.format, "qcow2");
    if (output == OUTPUT_JSON) {
        printf("{\n");
        if (bitmaps)
            printf("    \"bitmaps\": 0,\n");
        printf("    \"required\": %" PRIu64 ",\n    \"fully-allocated\": %" PRIu64 "\n}\n",
               m.required, m.fully_allocated);
    } else {
        printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", m.required,
               m.fully_allocated);
        if (bitmaps)
            printf("bitmaps size: 0\n");
    }
    return IMG_EXIT_OK;
}

int img_measure_main(int argc, char **argv)
{
    rt_vd_create_opts_t opts = {0};
    int status = measure(argc, argv, &opts);
    img_free_create_names(&opts);
    return status;
}
