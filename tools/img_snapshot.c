/*
 * vrt-img snapshot: lists, creates, applies and deletes a QCOW2 image's internal
 * snapshots, with qemu-img snapshot's options (-l, -c, -a, -d), its list layout and
 * its rules for naming one: -a takes an ID or a name (IDs first), -d a name (then, as
 * an extension, an ID).
 *
 * Where it differs: -c, -a and -d write to the image, so the format must be given
 * (-f qcow2), as for every writing command; and -l can print JSON with the keys of
 * qemu-img info's "snapshots" list.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "cli_common.h"
#include "img.h"

static const char usage_text[] =
    "Usage: " PROG " snapshot [-f FMT] [-U] [-q] [--output=human|json] -l FILE\n"
    "       " PROG " snapshot -f FMT [-q] -c NAME | -a SNAPSHOT | -d SNAPSHOT FILE\n"
    "List, create, apply or delete the internal snapshots of a QCOW2 image.\n"
    "\n"
    "  -l              list them (the default): ID, tag (name), VM state size, date,\n"
    "                  VM clock and instruction count, as qemu-img snapshot -l\n"
    "  -c NAME         take a snapshot of the disk as it is now, named NAME (names\n"
    "                  need not be unique; the ID is the next number)\n"
    "  -a SNAPSHOT     revert the disk to SNAPSHOT (an ID, else a name); the snapshot\n"
    "                  stays, and the disk takes its size\n"
    "  -d SNAPSHOT     delete SNAPSHOT (a name, else an ID) and free what only it held\n"
    "  -f FMT          the image's format; needed for -c, -a and -d, which write\n"
    "  -U, --force-share\n"
    "                  with -l: read the image even while another program has it open\n"
    "                  for writing (what is listed may be changing)\n"
    "      --output=OFMT  with -l: human (default) or json (qemu-img info's keys: id,\n"
    "                  name, vm-state-size, date-sec, date-nsec, vm-clock-sec,\n"
    "                  vm-clock-nsec, icount)\n"
    "  -q, --quiet     print nothing but errors\n"
    "  -h, --help      print this text and exit\n"
    "\n"
    "Each change is crash-safe: one header write makes it happen, and an interrupted one\n"
    "leaves the image as it was, with leaked space at worst (check -r leaks reclaims\n"
    "it).  An image whose reference counts are inconsistent is refused.\n";

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"force-share", no_argument, NULL, 'U'},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

void img_print_snapshots_human(const rt_vd_snapshot_t *sn, uint32_t count)
{
    if (count == 0)
        return;
    printf("Snapshot list:\n");
    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (uint32_t i = 0; i < count; i++) {
        char size[32], date[32] = "", clock[48];
        cli_format_size_qemu(size, sizeof(size), sn[i].vm_state_size);
        time_t when = (time_t)sn[i].date_sec;
        struct tm tm;
        if (localtime_r(&when, &tm) != NULL)
            strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        uint64_t ms = sn[i].vm_clock_nsec / 1000000u;
        snprintf(clock, sizeof(clock), "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64,
                 ms / 3600000u, ms / 60000u % 60u, ms / 1000u % 60u, ms % 1000u);
        char icount[24] = ""; /* empty when not recorded, as qemu-img prints it */
        if (sn[i].icount != UINT64_MAX)
            snprintf(icount, sizeof(icount), "%" PRIu64, sn[i].icount);
        /* qemu-img's row: a space after the ID and the tag even when they are long. */
        printf("%-9s %-16s %8s%20s%13s%11s\n", sn[i].id, sn[i].name, size, date, clock, icount);
    }
}

void img_print_snapshots_json(const rt_vd_snapshot_t *sn, uint32_t count, int indent)
{
    printf("[");
    for (uint32_t i = 0; i < count; i++) {
        int in = indent + 8;
        printf("%s\n%*s{\n", i ? "," : "", indent + 4, "");
        if (sn[i].icount != UINT64_MAX) /* left out when not recorded, as qemu-img does */
            printf("%*s\"icount\": %" PRIu64 ",\n", in, "", sn[i].icount);
        printf("%*s\"vm-clock-nsec\": %" PRIu64 ",\n", in, "", sn[i].vm_clock_nsec % 1000000000u);
        printf("%*s\"name\": ", in, "");
        cli_json_string(sn[i].name);
        printf(",\n%*s\"date-sec\": %" PRIu64 ",\n", in, "", sn[i].date_sec);
        printf("%*s\"date-nsec\": %u,\n", in, "", sn[i].date_nsec);
        printf("%*s\"vm-clock-sec\": %" PRIu64 ",\n", in, "", sn[i].vm_clock_nsec / 1000000000u);
        printf("%*s\"id\": ", in, "");
        cli_json_string(sn[i].id);
        printf(",\n%*s\"vm-state-size\": %" PRIu64 "\n%*s}", in, "", sn[i].vm_state_size,
               indent + 4, "");
    }
    printf(count ? "\n%*s]" : "%*s]", count ? indent : 0, "");
}

int img_list_snapshots(rt_vd_t vd, const char *path, rt_vd_snapshot_t **out, uint32_t *count)
{
    rt_vd_error_t err = {{0}};
    rt_vd_snapshot_t *sn = NULL;
    *out = NULL;
    *count = 0;
    int rc = rt_vd_snapshot_list(vd, NULL, 0, count, &err);
    if (rc == RT_ERR_NOT_SUPPORTED)
        return RT_OK; /* the format has none */
    if (RT_SUCCESS(rc) && *count > 0) {
        if ((sn = calloc(*count, sizeof(*sn))) == NULL)
            rc = RT_ERR_NO_MEMORY;
        else
            rc = rt_vd_snapshot_list(vd, sn, *count, count, &err);
    }
    if (RT_FAILURE(rc)) {
        char what[IMG_WHAT_MAX];
        snprintf(what, sizeof(what), "cannot list the snapshots of '%s'", path);
        img_report(what, rc, &err);
        free(sn);
        *count = 0;
        return rc;
    }
    *out = sn;
    return RT_OK;
}

static int list(const char *path, const char *format, enum img_output output, bool quiet)
{
    rt_vd_t vd;
    if (RT_FAILURE(img_open(&vd, path, format, RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_NO_BACKING, NULL)))
        return IMG_EXIT_ERROR;
    /* A format without snapshots has none to list: nothing printed, as qemu-img, so
     * that a script listing every disk's snapshots goes on. */
    uint32_t count = 0;
    rt_vd_snapshot_t *sn = NULL;
    int rc = img_list_snapshots(vd, path, &sn, &count);
    rt_vd_close(vd);
    if (RT_FAILURE(rc))
        return IMG_EXIT_ERROR;
    if (output == OUTPUT_JSON) {
        img_print_snapshots_json(sn, count, 0);
        printf("\n");
    } else if (!quiet) {
        img_print_snapshots_human(sn, count);
    }
    free(sn);
    return IMG_EXIT_OK;
}

enum action { LIST, CREATE, APPLY, DELETE };

static int change(const char *path, const char *format, enum action action, const char *arg)
{
    rt_vd_t vd;
    if (RT_FAILURE(img_open(&vd, path, format, 0, NULL)))
        return IMG_EXIT_ERROR;
    rt_vd_error_t err = {{0}};
    int rc;
    const char *verb;
    switch (action) {
    case CREATE:
        rc = rt_vd_snapshot_create(vd, arg, NULL, &err);
        verb = "create";
        break;
    case APPLY:
        rc = rt_vd_snapshot_apply(vd, arg, &err);
        verb = "apply";
        break;
    default:
        rc = rt_vd_snapshot_delete(vd, arg, &err);
        verb = "delete";
        break;
    }
    if (RT_FAILURE(rc)) {
        char what[IMG_WHAT_MAX];
        snprintf(what, sizeof(what), "cannot %s snapshot '%s' of '%s'", verb, arg, path);
        img_report(what, rc, &err);
        rt_vd_close(vd);
        return IMG_EXIT_ERROR;
    }
    /* Silent on success, as qemu-img snapshot is. */
    return RT_FAILURE(img_close(vd, path)) ? IMG_EXIT_ERROR : IMG_EXIT_OK;
}

int img_snapshot_main(int argc, char **argv)
{
    const char *cmd = argv[0], *format = NULL, *arg = NULL;
    enum img_output output = OUTPUT_HUMAN;
    enum action action = LIST;
    int actions = 0;
    bool quiet = false;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:lc:a:d:Uqh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': format = optarg; break;
        case 'l': action = LIST, actions++; break;
        case 'c': action = CREATE, arg = optarg, actions++; break;
        case 'a': action = APPLY, arg = optarg, actions++; break;
        case 'd': action = DELETE, arg = optarg, actions++; break;
        case 'U': img_force_share = true; break;
        case OPT_OUTPUT:
            if (!img_parse_output(cmd, optarg, &output))
                return IMG_EXIT_ERROR;
            break;
        case 'q': quiet = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (actions > 1) {
        img_usage_error(cmd, "only one of -l, -c, -a and -d");
        return IMG_EXIT_ERROR;
    }
    if (argc - optind != 1) {
        img_usage_error(cmd, argc - optind < 1 ? "FILE is expected" : "only FILE is expected");
        return IMG_EXIT_ERROR;
    }
    const char *path = argv[optind];
    if (action != LIST && img_force_share) {
        img_usage_error(cmd, "-U only reads: it cannot be used with -c, -a or -d");
        return IMG_EXIT_ERROR;
    }
    if (action != LIST && output == OUTPUT_JSON) {
        img_usage_error(cmd, "--output applies to -l only");
        return IMG_EXIT_ERROR;
    }
    if (action == LIST)
        return list(path, format, output, quiet);
    return change(path, format, action, arg);
}
