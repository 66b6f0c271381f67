/*
 * vrt-img info: what an image is -- format, sizes, allocation -- in qemu-img info's
 * text and JSON shapes.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "cli_common.h"
#include "img.h"

static const char usage_text[] =
    "Usage: " PROG " info [-f FMT] [-U] [--backing-chain] [--output=human|json] FILE\n"
    "Show an image's format, virtual size, space used on the host, allocation unit,\n"
    "allocated blocks, backing file (as named, and where it resolves), internal\n"
    "snapshots and a QCOW2 image's compat level.  The backing file is not opened, as qemu-img info "
    "does not\n"
    "open it: it need not exist, and a probed image is described as safely as one\n"
    "named with -f.\n"
    "\n"
    "  -f FMT             the image's format (raw, vdi, qcow2); default: probe it\n"
    "      --output=OFMT  human (default) or json (qemu-img info's keys: filename, format,\n"
    "                     virtual-size, actual-size, cluster-size, backing-filename,\n"
    "                     full-backing-filename, backing-filename-format,\n"
    "                     snapshots, format-specific)\n"
    "  -U, --force-share  read the image even while another process (a running guest)\n"
    "                     has it open for writing, without taking its lock\n"
    "      --backing-chain  describe every image of the chain, the image first (each\n"
    "                     opened alone, with the format the one above records; needs -f)\n"
    "  -h, --help         print this text and exit\n";

/* QCOW2's variant is its version; qemu-img calls it compat (0.10 for v2, 1.1 for v3).
 * NULL for other formats, or a variant this tool does not know. */
static const char *qcow2_compat(const rt_vd_info_t *info)
{
    if (strcmp(info->format, "qcow2"))
        return NULL;
    if (!strcmp(info->variant, "v2"))
        return "0.10";
    if (!strcmp(info->variant, "v3"))
        return "1.1";
    return NULL;
}

/* A flag as qemu-img prints one, in text and in JSON alike. */
static const char *yes_no(uint32_t set)
{
    return set ? "true" : "false";
}

/* The backing file's name as a reader resolves it; NULL without one. */
static char *full_backing_name(const char *path, const rt_vd_info_t *info)
{
    return info->backing_file != NULL ? img_path_beside(path, info->backing_file) : NULL;
}

static void print_human(const char *path, const rt_vd_info_t *info, const rt_vd_snapshot_t *sn,
                        uint32_t snapshots)
{
    const char *compat = qcow2_compat(info);
    char size[32];
    char *full = full_backing_name(path, info);

    printf("image: %s\n", path);
    printf("file format: %s\n", info->format);
    printf("virtual size: %s (%" PRIu64 " bytes)\n",
           cli_format_size_qemu(size, sizeof(size), info->virtual_size), info->virtual_size);
    printf("disk size: %s\n", cli_format_size_qemu(size, sizeof(size), info->file_allocated));
    if (info->block_size)
        printf("cluster_size: %" PRIu32 "\n", info->block_size);
    if (info->backing_file) {
        printf("backing file: %s", info->backing_file);
        if (full != NULL && strcmp(full, info->backing_file))
            printf(" (actual path: %s)", full);
        printf("\n");
    }
    if (info->backing_format)
        printf("backing file format: %s\n", info->backing_format);
    free(full);
    img_print_snapshots_human(sn, snapshots);
    if (info->variant[0] || info->blocks_total) {
        printf("Format specific information:\n");
        if (compat)
            printf("    compat: %s\n", compat);
        else if (info->variant[0])
            printf("    variant: %s\n", info->variant);
        if (compat) {
            /* qemu-img's lines, in its order (v3 only: lazy refcounts, corrupt, extended
             * L2, which this library refuses to open). */
            bool v3 = !strcmp(compat, "1.1");
            printf("    compression type: %s\n", info->compression);
            if (v3)
                printf("    lazy refcounts: %s\n", yes_no(info->flags & RT_VD_INFO_LAZY_REFCOUNTS));
            printf("    refcount bits: %" PRIu32 "\n", info->refcount_bits);
            if (v3)
                printf("    corrupt: %s\n    extended l2: false\n",
                       yes_no(info->flags & RT_VD_INFO_CORRUPT));
        }
        printf("    allocated blocks: %" PRIu64 "\n", info->blocks_allocated);
        printf("    total blocks: %" PRIu64 "\n", info->blocks_total);
    }
}

static void print_json(const char *path, const rt_vd_info_t *info, const rt_vd_snapshot_t *sn,
                       uint32_t snapshots, const char *end)
{
    const char *compat = qcow2_compat(info);

    printf("{\n");
    if (snapshots > 0) {
        printf("    \"snapshots\": ");
        img_print_snapshots_json(sn, snapshots, 4);
        printf(",\n");
    }
    printf("    \"virtual-size\": %" PRIu64 ",\n    \"filename\": ", info->virtual_size);
    cli_json_string(path);
    if (info->block_size)
        printf(",\n    \"cluster-size\": %" PRIu32, info->block_size);
    printf(",\n    \"format\": ");
    cli_json_string(info->format);
    printf(",\n    \"actual-size\": %" PRIu64, info->file_allocated);
    if (info->variant[0] || info->blocks_total) {
        printf(",\n    \"format-specific\": {\n        \"type\": ");
        cli_json_string(info->format);
        printf(",\n        \"data\": {\n            \"%s\": ", compat ? "compat" : "variant");
        cli_json_string(compat ? compat : info->variant);
        if (compat) {
            bool v3 = !strcmp(compat, "1.1");
            printf(",\n            \"compression-type\": ");
            cli_json_string(info->compression);
            if (v3)
                printf(",\n            \"lazy-refcounts\": %s",
                       yes_no(info->flags & RT_VD_INFO_LAZY_REFCOUNTS));
            printf(",\n            \"refcount-bits\": %" PRIu32, info->refcount_bits);
            if (v3)
                printf(",\n            \"corrupt\": %s,\n            \"extended-l2\": false",
                       yes_no(info->flags & RT_VD_INFO_CORRUPT));
        }
        printf(",\n            \"allocated-blocks\": %" PRIu64
               ",\n            \"total-blocks\": %" PRIu64 "\n        }\n    }",
               info->blocks_allocated, info->blocks_total);
    }
    if (info->backing_file) {
        char *full = full_backing_name(path, info);
        printf(",\n    \"backing-filename\": ");
        cli_json_string(info->backing_file);
        printf(",\n    \"full-backing-filename\": ");
        cli_json_string(full != NULL ? full : info->backing_file);
        free(full);
    }
    if (info->backing_format) {
        printf(",\n    \"backing-filename-format\": ");
        cli_json_string(info->backing_format);
    }
    printf(",\n    \"dirty-flag\": %s\n}%s", yes_no(info->flags & RT_VD_INFO_DIRTY), end);
}

/* Describes the image at @a path (@a format, NULL to probe), opened alone; *@a next
 * receives where its backing file resolves (NULL: none) and *@a next_format the format
 * it records for it (NULL: none; to be freed). */
static int describe(const char *path, const char *format, enum img_output output,
                    const char *json_end, char **next, char **next_format)
{
    rt_vd_t vd;
    rt_vd_info_t info;
    *next = *next_format = NULL;
    if (RT_FAILURE(img_open_info(&vd, path, format, RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_NO_BACKING,
                                 &info)))
        return RT_ERR_GENERAL_FAILURE;
    rt_vd_snapshot_t *sn = NULL;
    uint32_t snapshots = 0;
    int rc = img_list_snapshots(vd, path, &sn, &snapshots);
    if (RT_SUCCESS(rc)) {
        if (output == OUTPUT_JSON)
            print_json(path, &info, sn, snapshots, json_end);
        else
            print_human(path, &info, sn, snapshots);
        *next = full_backing_name(path, &info);
        if (info.backing_format != NULL)
            *next_format = strdup(info.backing_format);
    }
    free(sn);
    rt_vd_close(vd);
    return rc;
}

/* The image at @a path and every image under it, as qemu-img info --backing-chain. */
static int describe_chain(const char *path, const char *format, enum img_output output)
{
    char *current = strdup(path), *current_format = format ? strdup(format) : NULL;
    int rc = current != NULL ? RT_OK : RT_ERR_NO_MEMORY;
    if (output == OUTPUT_JSON)
        printf("[\n");
    for (unsigned depth = 0; RT_SUCCESS(rc) && current != NULL; depth++) {
        if (depth == IMG_MAX_CHAIN) {
            fprintf(stderr, "%s: %s: the backing chain is deeper than %u images (a loop?)\n", PROG,
                    path, IMG_MAX_CHAIN);
            rc = RT_ERR_VD_CORRUPT;
            break;
        }
        char *next = NULL, *next_format = NULL;
        if (depth > 0 && output == OUTPUT_HUMAN)
            printf("\n");
        rc = describe(current, current_format, output, "", &next, &next_format);
        if (RT_SUCCESS(rc) && output == OUTPUT_JSON)
            printf(next != NULL ? ",\n" : "\n");
        free(current);
        free(current_format);
        current = next;
        current_format = next_format;
    }
    if (output == OUTPUT_JSON && RT_SUCCESS(rc))
        printf("]\n");
    free(current);
    free(current_format);
    return rc;
}

int img_info_main(int argc, char **argv)
{
    const char *format = NULL, *path;
    enum img_output output = OUTPUT_HUMAN;
    bool backing_chain = false;
    int status;

    path =
        img_parse_inspect_args(argc, argv, usage_text, &format, &output, &backing_chain, &status);
    if (!path)
        return status;
    if (backing_chain && format == NULL) {
        /* Each image under this one is a file it names: following them is the caller's
         * to allow, as for map, compare and convert. */
        fprintf(stderr,
                "%s: %s: --backing-chain opens the files the image names; give its "
                "format with -f to allow that\n",
                PROG, path);
        return IMG_EXIT_ERROR;
    }
    char *next = NULL, *next_format = NULL;
    int rc = backing_chain ? describe_chain(path, format, output)
                           : describe(path, format, output, "\n", &next, &next_format);
    free(next);
    free(next_format);
    return RT_SUCCESS(rc) ? IMG_EXIT_OK : IMG_EXIT_ERROR;
}
