/*
 * vrt-img check: checks an image's metadata, optionally reclaiming leaked space, with
 * qemu-img check's output and exit statuses:
 *
 *   0  no problem found          2  corruptions found
 *   1  the check could not run   3  leaks found, and no corruption
 *  63  the format has no check
 *
 * An image whose metadata is so broken that it will not open (RT_ERR_VD_CORRUPT) is
 * reported as corrupt (2), not as a failure to check (1): that is the answer a script
 * running check wants.
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

#include "cli_common.h"
#include "img.h"

#define CHECK_EXIT_CORRUPT     2
#define CHECK_EXIT_LEAKS       3
#define CHECK_EXIT_UNSUPPORTED 63

static const char usage_text[] =
    "Usage: " PROG " check [-f FMT] [--output=human|json] [-r leaks] [-q] FILE\n"
    "Check an image's metadata for consistency.\n"
    "\n"
    "  -f FMT             the image's format (raw, vdi, qcow2); default: probe it (not\n"
    "                     with -r).  The backing file is not opened, nor needed\n"
    "      --output=OFMT  human (default) or json (qemu-img check's keys)\n"
    "  -r leaks           reclaim leaked space (needs -f, since it writes); qemu-img's\n"
    "                     '-r all' is refused: corruptions are never repaired\n"
    "  -q                 quiet: no output in human mode, only the exit status\n"
    "  -U, --force-share  read the image even while another process (a running guest)\n"
    "                     has it open for writing, without taking its lock\n"
    "  -h, --help         print this text and exit\n"
    "\n"
    "Exit status: 0 no errors, 1 the check could not run, 2 corruptions found (also\n"
    "when the image is too corrupt to open), 3 leaked clusters found but no corruption,\n"
    "63 the format does not support checks.\n";

struct check_report {
    const char *path;
    const char *format;
    rt_vd_check_result_t res;
    bool measures_fragments; /* QCOW2: the fragmentation figures are real */
};

/* qemu-img's percentages of the allocated clusters (0 when none are). */
static double percent_of_allocated(uint64_t n, const rt_vd_check_result_t *res)
{
    return res->blocks_allocated ? (double)n * 100.0 / (double)res->blocks_allocated : 0.0;
}

static void print_human(const struct check_report *r)
{
    const rt_vd_check_result_t *res = &r->res;

    if (res->corruptions == 0 && res->leaks == 0) {
        printf("No errors were found on the image.\n");
    } else {
        if (res->corruptions)
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   res->corruptions);
        if (res->leaks)
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   res->leaks);
    }
    if (res->blocks_total && r->measures_fragments)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% "
               "compressed clusters\n",
               res->blocks_allocated, res->blocks_total,
               (double)res->blocks_allocated * 100.0 / (double)res->blocks_total,
               percent_of_allocated(res->blocks_fragmented, res),
               percent_of_allocated(res->blocks_compressed, res));
    else if (res->blocks_total && res->blocks_allocated)
        /* The format does not measure fragmentation: no made-up 0.00%. */
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated clusters\n",
               res->blocks_allocated, res->blocks_total,
               (double)res->blocks_allocated * 100.0 / (double)res->blocks_total);
    if (res->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", res->image_end_offset);
}

/* qemu-img's ImageCheck: counts that are 0 are left out, as qemu-img does. */
static void print_json(const struct check_report *r)
{
    const rt_vd_check_result_t *res = &r->res;

    printf("{\n    \"filename\": ");
    cli_json_string(r->path);
    printf(",\n    \"format\": ");
    cli_json_string(r->format);
    printf(",\n    \"check-errors\": 0");
    if (res->corruptions)
        printf(",\n    \"corruptions\": %" PRIu64, res->corruptions);
    if (res->leaks)
        printf(",\n    \"leaks\": %" PRIu64, res->leaks);
    if (res->leaks_fixed)
        printf(",\n    \"leaks-fixed\": %" PRIu64, res->leaks_fixed);
    if (res->blocks_total)
        printf(",\n    \"total-clusters\": %" PRIu64, res->blocks_total);
    if (res->blocks_allocated)
        printf(",\n    \"allocated-clusters\": %" PRIu64, res->blocks_allocated);
    if (r->measures_fragments && res->blocks_fragmented)
        printf(",\n    \"fragmented-clusters\": %" PRIu64, res->blocks_fragmented);
    if (r->measures_fragments && res->blocks_compressed)
        printf(",\n    \"compressed-clusters\": %" PRIu64, res->blocks_compressed);
    if (res->image_end_offset)
        printf(",\n    \"image-end-offset\": %" PRIu64, res->image_end_offset);
    printf("\n}\n");
}

static int exit_status(const rt_vd_check_result_t *res)
{
    if (res->corruptions)
        return CHECK_EXIT_CORRUPT;
    if (res->leaks)
        return CHECK_EXIT_LEAKS;
    return IMG_EXIT_OK;
}

/* Runs the check; after a repair that fixed something, checks again (as qemu-img
 * does), so what is reported is the state the image is left in. */
static int run_check(rt_vd_t vd, uint32_t flags, bool human, struct check_report *r)
{
    uint64_t leaks_fixed;
    int rc = rt_vd_check(vd, flags, &r->res);

    if (RT_FAILURE(rc) || r->res.leaks_fixed == 0)
        return rc;
    leaks_fixed = r->res.leaks_fixed;
    if (human)
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRIu64 " leaked clusters\n    0 corruptions\n\n"
               "Double checking the fixed image now...\n",
               leaks_fixed);
    rc = rt_vd_check(vd, 0, &r->res);
    r->res.leaks_fixed = leaks_fixed;
    return rc;
}

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"repair", required_argument, NULL, 'r'},
    {"quiet", no_argument, NULL, 'q'},
    {"force-share", no_argument, NULL, 'U'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int img_check_main(int argc, char **argv)
{
    const char *cmd = argv[0], *format = NULL;
    enum img_output output = OUTPUT_HUMAN;
    struct check_report report = {0};
    rt_vd_error_t err = {{0}};
    rt_vd_info_t info;
    uint32_t repair = 0;
    bool quiet = false;
    rt_vd_t vd;
    int c, rc;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:r:qUh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case OPT_OUTPUT:
            if (!img_parse_output(cmd, optarg, &output))
                return IMG_EXIT_ERROR;
            break;
        case 'r':
            if (!strcmp(optarg, "all")) {
                img_usage_error(cmd, "-r all is not supported: only leaks can be repaired "
                                     "(-r leaks)");
                return IMG_EXIT_ERROR;
            }
            if (strcmp(optarg, "leaks")) {
                img_usage_error(cmd, "-r: '%s' is not leaks", optarg);
                return IMG_EXIT_ERROR;
            }
            repair = RT_VD_CHECK_REPAIR_LEAKS;
            break;
        case 'q': quiet = true; break;
        case 'U': img_force_share = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (argc - optind != 1) {
        img_usage_error(cmd, argc - optind ? "exactly one FILE is expected" : "FILE is missing");
        return IMG_EXIT_ERROR;
    }
    report.path = argv[optind];
    report.format = format ? format : "unknown";
    /* A check reads metadata only: the backing file is not opened (nor needed). */
    rc = img_open(&vd, report.path, format,
                  repair ? 0 : RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_NO_BACKING, &err);
    if (rc == RT_ERR_VD_CORRUPT) {
        report.res.corruptions = 1;
        if (output == OUTPUT_JSON)
            print_json(&report);
        else if (!quiet)
            print_human(&report);
        return CHECK_EXIT_CORRUPT;
    }
    if (RT_FAILURE(rc))
        return IMG_EXIT_ERROR;
    if (RT_SUCCESS(rt_vd_get_info(vd, &info)))
        report.format = info.format; /* the probed name; static storage */
    report.measures_fragments = !strcmp(report.format, "qcow2");

    rc = run_check(vd, repair, output == OUTPUT_HUMAN && !quiet, &report);
    if (rc == RT_ERR_NOT_SUPPORTED) {
        fprintf(stderr, "%s: this image format does not support checks\n", PROG);
        rt_vd_close(vd);
        return CHECK_EXIT_UNSUPPORTED;
    }
    if (RT_FAILURE(rc)) {
        img_report("check failed", rc, NULL);
        rt_vd_close(vd);
        return IMG_EXIT_ERROR;
    }
    if (RT_FAILURE(img_close(vd, report.path)))
        return IMG_EXIT_ERROR; /* a repair may not have reached the disk */
    if (report.res.first_problem[0])
        fprintf(stderr, "%s\n", report.res.first_problem);
    if (report.res.repair_refused[0])
        fprintf(stderr, "%s: leaks not repaired: %s\n", PROG, report.res.repair_refused);
    if (output == OUTPUT_JSON)
        print_json(&report);
    else if (!quiet)
        print_human(&report);
    return exit_status(&report.res);
}
