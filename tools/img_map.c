/*
 * vrt-img map: where the guest's data lives, as qemu-img map prints it.  Runs that
 * rt_vd_block_status returns one after another are merged while their flags and depth
 * are equal and, for data, their host offsets continue each other, as qemu-img does.
 *
 * Depth is the image of the backing chain that answers (0 the image itself); a range
 * that no image of the chain allocates gets the depth of the chain's last image, which
 * is what both the library and qemu-img report.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <inttypes.h>
#include <stdio.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "img.h"

/* The longest run asked for in one call: any run longer is merged anyway. */
#define MAP_QUERY_MAX (1ull << 40)

static const char usage_text[] =
    "Usage: " PROG " map [-f FMT] [--output=human|json] FILE\n"
    "Show where each range of the guest disk is stored in the image file.\n"
    "\n"
    "  -f FMT             the image's format (raw, vdi, qcow2); default: probe it (an\n"
    "                     image with a backing file needs -f)\n"
    "      --output=OFMT  human (default): the ranges that hold data, with their\n"
    "                     offsets in the file and the backing depth that holds them;\n"
    "                     json: every range, in qemu-img map's shape (start, length,\n"
    "                     depth, present, zero, data, compressed, and offset for data\n"
    "                     stored uncompressed)\n"
    "  -U, --force-share  read the image even while another process (a running guest)\n"
    "                     has it open for writing, without taking its lock\n"
    "  -h, --help         print this text and exit\n";

struct map_printer {
    enum img_output output;
    const char *path;
    rt_vd_t vd;
    bool first;
};

static bool is_data(const rt_vd_extent_t *e)
{
    return (e->flags & RT_VD_EXTENT_DATA) && e->host_offset != UINT64_MAX;
}

static const char *json_bool(bool value)
{
    return value ? "true" : "false";
}

static void print_run(struct map_printer *p, const rt_vd_extent_t *e)
{
    bool data = is_data(e);
    bool compressed = e->flags & RT_VD_EXTENT_COMPRESSED;

    if (p->output == OUTPUT_HUMAN) {
        /* The file at the depth in the last column, as qemu-img names it.  Compressed
         * data has no offset to show (qemu-img refuses to print it). */
        if (!data && !compressed)
            return;
        printf("%#-16" PRIx64 "%#-16" PRIx64, e->offset, e->length);
        if (data)
            printf("%#-16" PRIx64, e->host_offset);
        else
            printf("%-16s", "compressed");
        const char *file = rt_vd_chain_path(p->vd, e->depth);
        printf("%s\n", file != NULL ? file : p->path);
        return;
    }
    printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %" PRIu32
           ", \"present\": %s, \"zero\": %s, \"data\": %s, \"compressed\": %s",
           p->first ? "[" : ",\n", e->offset, e->length, e->depth,
           json_bool(e->flags & (RT_VD_EXTENT_ALLOCATED | RT_VD_EXTENT_DATA)),
           json_bool(e->flags & RT_VD_EXTENT_ZERO), json_bool(e->flags & RT_VD_EXTENT_DATA),
           json_bool(compressed));
    if (data)
        printf(", \"offset\": %" PRIu64, e->host_offset);
    printf("}");
    p->first = false;
}

/* Whether @a next continues @a run so that both print as one. */
static bool continues(const rt_vd_extent_t *run, const rt_vd_extent_t *next)
{
    if (run->flags != next->flags || run->depth != next->depth ||
        run->offset + run->length != next->offset)
        return false;
    if (!is_data(run))
        return true;
    return next->host_offset == run->host_offset + run->length;
}

static int print_map(rt_vd_t vd, uint64_t size, struct map_printer *p)
{
    rt_vd_extent_t run = {0}, next;
    char what[IMG_WHAT_MAX];

    if (p->output == OUTPUT_HUMAN)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    for (uint64_t off = 0; off < size; off += next.length) {
        uint64_t want = size - off < MAP_QUERY_MAX ? size - off : MAP_QUERY_MAX;
        int rc = rt_vd_block_status(vd, off, want, &next);

        if (RT_FAILURE(rc)) {
            if (p->output == OUTPUT_JSON && !p->first)
                printf("]\n"); /* keep what was printed well-formed */
            snprintf(what, sizeof(what), "reading the allocation map of '%s' at offset %" PRIu64,
                     p->path, off);
            img_report(what, rc, NULL);
            return rc;
        }
        if (run.length && continues(&run, &next)) {
            run.length += next.length;
            continue;
        }
        if (run.length)
            print_run(p, &run);
        run = next;
    }
    if (run.length)
        print_run(p, &run);
    if (p->output == OUTPUT_JSON)
        printf(p->first ? "[]\n" : "]\n");
    return RT_OK;
}

int img_map_main(int argc, char **argv)
{
    struct map_printer printer = {.output = OUTPUT_HUMAN, .first = true};
    const char *format = NULL;
    rt_vd_info_t info;
    rt_vd_t vd;
    int status, rc;

    printer.path =
        img_parse_inspect_args(argc, argv, usage_text, &format, &printer.output, NULL, &status);
    if (!printer.path)
        return status;
    if (RT_FAILURE(img_open_info(&vd, printer.path, format, RT_VD_OPEN_READ_ONLY, &info)))
        return IMG_EXIT_ERROR;
    printer.vd = vd;
    rc = print_map(vd, info.virtual_size, &printer);
    rt_vd_close(vd);
    return RT_FAILURE(rc) ? IMG_EXIT_ERROR : IMG_EXIT_OK;
}
