/*
 * vrt-img bench: runs a read or write workload on an image through the virtual-disk
 * queue (rt_vd_queue_*) and reports it exactly as vrt-bench reports a file workload
 * (bench_report.c), so the cost of the VD layer over raw file AIO can be read off by
 * comparing the two.
 *
 * The engine keeps --depth requests in flight: each slot owns one buffer; a completion
 * callback only marks its slot reaped, and after rt_vd_queue_run returns the reaped
 * slots are checked, counted and started again.  Latency is submit to reap: from just
 * before the rt_vd_queue_read/write call to just after the rt_vd_queue_run call that
 * ran the callback.  The measured window opens before the first submit and closes when
 * the last counted request is reaped: after -c COUNT requests, or at the first reap
 * after --runtime (what is still in flight then is drained and not counted).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rt/err.h>
#include <rt/mem.h>
#include <rt/time.h>
#include <rt/vd.h>

#include "bench_report.h"
#include "cli_common.h"
#include "img.h"

#define DEFAULT_COUNT 75000u /* qemu-img bench's */
#define MAX_DEPTH     4096u  /* rt_vd_queue_create's limit */
#define MAX_BS        (64ull << 20)
#define RUN_SLICE_MS  100u

static const char usage_text[] =
    "Usage: " PROG " bench [-f FMT] [-o OPTIONS] [-t CACHE] [-w] [--pattern=rand|seq] [-s SIZE]\n"
    "                     [-d DEPTH] [-c COUNT | --runtime SECONDS] [--output=human|json] [-U]\n"
    "                     FILE\n"
    "Run a read (or, with -w, write) workload on an image through the virtual-disk\n"
    "queue API and report IOPS, bandwidth, latency percentiles and CPU time per I/O,\n"
    "as vrt-bench does for plain files.\n"
    "\n"
    "  -f FMT              the image's format; default: probe it (not with -w)\n"
    "  -o OPTIONS          the format's open options, name=value,... (qcow2:\n"
    "                      l2-cache-size=SIZE); needs -f\n"
    "  -t CACHE            none (default): bypass the host page cache (O_DIRECT);\n"
    "                      writeback: go through it\n"
    "  -w                  write instead of read (overwrites the image's contents!)\n"
    "      --pattern=P     rand (default): random offsets; seq: sequential, wrapping\n"
    "  -s SIZE             bytes per request, a multiple of 512 (default 4k)\n"
    "  -d DEPTH            requests in flight, 1..4096 (default 32)\n"
    "  -c COUNT            run COUNT requests (default 75000, as qemu-img bench)\n"
    "      --runtime=TIME  run for TIME seconds instead (s, m or h suffix allowed)\n"
    "      --output=OFMT   human (default) or json (vrt-bench's JSON shape)\n"
    "  -q                  no notes on stderr\n"
    "  -U, --force-share   read an image another user holds, without a lock (not with -w)\n"
    "  -h, --help          print this text and exit\n";

struct bench_options {
    const char *path, *format;
    char **open_options; /* -o, or NULL */
    bool no_cache, write, sequential, quiet;
    uint64_t bs;
    uint32_t depth;
    uint64_t count;   /* 0 in --runtime mode */
    double runtime_s; /* 0 in count mode */
    enum img_output output;
};

struct bench_slot {
    struct img_bench *bench;
    void *buf;
    uint64_t off;
    uint64_t submit_ns;
    int status;
};

struct img_bench {
    const struct bench_options *opt;
    rt_vd_t vd;
    rt_vd_info_t info;
    rt_vd_queue_t queue;
    struct bench_slot *slots;
    struct bench_slot **reaped; /* filled by callbacks, emptied after each run */
    uint32_t n_reaped, in_flight;
    void *buffers;
    size_t buffers_size;

    uint64_t prng, block_count, next_seq_off;
    uint64_t started, end_ns;
    bool window_open, failed;
    int stopped_by;
    struct bench_measure m;
};

static const char *workload_name(const struct bench_options *opt)
{
    if (opt->sequential)
        return opt->write ? "write" : "read";
    return opt->write ? "randwrite" : "randread";
}

static void reaped(void *user, int status)
{
    struct bench_slot *s = user;

    s->status = status;
    s->bench->reaped[s->bench->n_reaped++] = s;
}

static int submit(struct img_bench *b, struct bench_slot *s)
{
    const struct bench_options *opt = b->opt;
    rt_iovec_t iov = {s->buf, (size_t)opt->bs};
    char what[96];
    int rc;

    if (opt->sequential) {
        s->off = b->next_seq_off;
        b->next_seq_off += opt->bs;
        if (b->next_seq_off > b->info.virtual_size - opt->bs)
            b->next_seq_off = 0;
    } else {
        s->off = cli_prng_next(&b->prng) % b->block_count * opt->bs;
    }
    s->submit_ns = rt_time_nano_ts();
    if (opt->write)
        rc = rt_vd_queue_write(b->queue, b->vd, s->off, &iov, 1, reaped, s);
    else
        rc = rt_vd_queue_read(b->queue, b->vd, s->off, &iov, 1, reaped, s);
    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "starting a %s at offset %" PRIu64,
                 dir_names[opt->write ? DIR_WRITE : DIR_READ], s->off);
        img_report(what, rc, NULL);
        b->failed = true;
        return rc;
    }
    b->started++;
    b->in_flight++;
    if (b->window_open)
        b->m.submit_calls++;
    return RT_OK;
}

/* Whether another request should start now. */
static bool keep_going(const struct img_bench *b, uint64_t now)
{
    if (b->failed || !b->window_open)
        return false;
    if (b->opt->count)
        return b->started < b->opt->count;
    return now < b->end_ns;
}

static void close_window(struct img_bench *b, uint64_t now)
{
    if (b->window_open)
        bench_window_close(&b->m, now);
    b->window_open = false;
}

/* Checks and counts what the last run reaped, and starts the slots again. */
static void handle_reaped(struct img_bench *b, uint64_t now)
{
    enum dir dir = b->opt->write ? DIR_WRITE : DIR_READ;
    uint32_t n = b->n_reaped;
    bool counted;

    /* What this run reaped completed inside the window if it was open: count it, even
     * when the window closes now. */
    counted = b->window_open;
    if (b->window_open && img_stop_requested())
        b->stopped_by = img_stop_requested();
    if (b->window_open && (b->stopped_by || (!b->opt->count && now >= b->end_ns)))
        close_window(b, now);
    if (counted && n)
        b->m.wait_calls++;
    b->n_reaped = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct bench_slot *s = b->reaped[i];

        b->in_flight--;
        if (RT_FAILURE(s->status)) {
            char what[96];

            if (!b->failed) {
                snprintf(what, sizeof(what), "%s of %" PRIu64 " bytes at offset %" PRIu64,
                         dir_names[dir], b->opt->bs, s->off);
                img_report(what, s->status, NULL);
            }
            b->failed = true;
            continue;
        }
        if (counted) {
            b->m.stats[dir].ios++;
            b->m.stats[dir].bytes += b->opt->bs;
            hist_record(&b->m.stats[dir].lat, now - s->submit_ns);
        }
        if (keep_going(b, now))
            submit(b, s);
    }
    if (b->opt->count && b->in_flight == 0)
        close_window(b, now);
}

static int run_workload(struct img_bench *b)
{
    uint64_t now = rt_time_nano_ts();

    bench_window_open(&b->m, now);
    b->window_open = true;
    b->end_ns = now + cli_s_to_ns(b->opt->runtime_s);
    for (uint32_t i = 0; i < b->opt->depth && keep_going(b, now); i++)
        if (RT_FAILURE(submit(b, &b->slots[i])))
            break;
    while (b->in_flight > 0) {
        int rc = rt_vd_queue_run(b->queue, 1, RUN_SLICE_MS, NULL);

        now = rt_time_nano_ts();
        if (RT_FAILURE(rc) && rc != RT_ERR_TIMEOUT && rc != RT_ERR_INTERRUPTED) {
            img_report("waiting for completions", rc, NULL);
            return IMG_EXIT_ERROR; /* cannot drain without a working queue */
        }
        handle_reaped(b, now);
    }
    close_window(b, now);
    return b->failed ? IMG_EXIT_ERROR : IMG_EXIT_OK;
}

static int setup(struct img_bench *b, const struct bench_options *opt)
{
    uint32_t flags =
        (opt->write ? 0 : RT_VD_OPEN_READ_ONLY) | (opt->no_cache ? RT_VD_OPEN_NO_CACHE : 0);
    size_t page = rt_mem_page_size();
    size_t stride = (size_t)((opt->bs + page - 1) / page * page);
    uint64_t pattern = 0x7772697465ull; /* "write" */
    int rc;

    b->opt = opt;
    b->prng = 1;
    bench_measure_init(&b->m);
    rc = img_open_info_with(&b->vd, opt->path, opt->format, flags,
                            (const char *const *)opt->open_options, &b->info);
    if (rc == RT_ERR_NOT_SUPPORTED && opt->no_cache)
        fprintf(stderr, "  (the file system may refuse O_DIRECT: try -t writeback)\n");
    if (RT_FAILURE(rc))
        return rc;
    if (b->info.virtual_size < opt->bs) {
        fprintf(stderr, "%s: %s is smaller than one request (-s %" PRIu64 ")\n", PROG, opt->path,
                opt->bs);
        return RT_ERR_OUT_OF_RANGE;
    }
    b->block_count = b->info.virtual_size / opt->bs;
    rc = rt_vd_queue_create(&b->queue, opt->depth);
    if (RT_FAILURE(rc)) {
        img_report("creating the I/O queue", rc, NULL);
        return rc;
    }
    b->slots = calloc(opt->depth, sizeof(*b->slots));
    b->reaped = calloc(opt->depth, sizeof(*b->reaped));
    b->buffers_size = stride * opt->depth;
    b->buffers = rt_mem_page_alloc(b->buffers_size);
    if (!b->slots || !b->reaped || !b->buffers) {
        img_report("allocating request buffers", RT_ERR_NO_MEMORY, NULL);
        return RT_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i < opt->depth; i++) {
        b->slots[i].bench = b;
        b->slots[i].buf = (char *)b->buffers + (size_t)i * stride;
        if (opt->write)
            cli_fill_pattern(b->slots[i].buf, (size_t)opt->bs, &pattern);
    }
    return RT_OK;
}

/* Only after an idle queue: a failed run leaves requests the process exit must end. */
static void teardown(struct img_bench *b, bool idle)
{
    if (!idle)
        return;
    rt_vd_queue_destroy(b->queue);
    rt_vd_close(b->vd);
    rt_mem_page_free(b->buffers, b->buffers_size);
    free(b->reaped);
    free(b->slots);
}

static void print_header(const struct img_bench *b)
{
    const struct bench_options *opt = b->opt;
    char bs[32], size[32];

    printf("%s bench %s\n", PROG, PACKAGE_VERSION);
    printf("  image     %s (%s, %s virtual)\n", opt->path, b->info.format,
           cli_format_size(size, sizeof(size), b->info.virtual_size));
    printf("  workload  %s, bs %s, depth %" PRIu32 ", cache=%s\n", workload_name(opt),
           cli_format_size(bs, sizeof(bs), opt->bs), opt->depth,
           opt->no_cache ? "none" : "writeback");
    if (opt->count)
        printf("  length    %" PRIu64 " requests\n\n", opt->count);
    else
        printf("  length    %gs\n\n", opt->runtime_s);
    fflush(stdout);
}

static void print_report(const struct img_bench *b, const struct results *r)
{
    const struct bench_options *opt = b->opt;
    const bool in_workload[DIR_COUNT] = {[DIR_READ] = !opt->write, [DIR_WRITE] = opt->write};

    if (opt->output == OUTPUT_HUMAN) {
        bench_print_human_results(r, in_workload, false, b->stopped_by != 0);
        return;
    }
    printf("{\n  \"tool\": \"%s bench\",\n  \"version\": ", PROG);
    cli_json_string(PACKAGE_VERSION);
    printf(",\n  \"params\": {\n    \"filename\": ");
    cli_json_string(opt->path);
    printf(", \"format\": ");
    cli_json_string(b->info.format);
    printf(", \"virtual_size\": %" PRIu64 ",\n    \"rw\": \"%s\", \"bs\": %" PRIu64
           ", \"depth\": %" PRIu32 ", \"cache\": \"%s\",\n",
           b->info.virtual_size, workload_name(opt), opt->bs, opt->depth,
           opt->no_cache ? "none" : "writeback");
    if (opt->count)
        printf("    \"count\": %" PRIu64 ", \"runtime_s\": null\n  },\n", opt->count);
    else
        printf("    \"count\": null, \"runtime_s\": %g\n  },\n", opt->runtime_s);
    bench_print_json_results(r, b->stopped_by);
    printf("}\n");
}

/* Parses the options; returns -1 to go on, or the exit status. */
static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"options", required_argument, NULL, 'o'},
    {"cache", required_argument, NULL, 't'},
    {"write", no_argument, NULL, 'w'},
    {"pattern", required_argument, NULL, OPT_PATTERN},
    {"size", required_argument, NULL, 's'},
    {"depth", required_argument, NULL, 'd'},
    {"count", required_argument, NULL, 'c'},
    {"runtime", required_argument, NULL, OPT_RUNTIME},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"quiet", no_argument, NULL, 'q'},
    {"force-share", no_argument, NULL, 'U'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int parse_options(int argc, char **argv, struct bench_options *opt)
{
    const char *cmd = argv[0];
    uint64_t value;
    bool have_count = false;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:o:t:ws:d:c:qUh", long_options, NULL)) != -1) {
        switch (c) {
        case 'f': opt->format = optarg; break;
        case 'o':
            img_free_options(opt->open_options);
            if ((opt->open_options = img_split_options(cmd, "-o", optarg)) == NULL)
                return IMG_EXIT_ERROR;
            break;
        case 't':
            if (strcmp(optarg, "none") && strcmp(optarg, "writeback")) {
                img_usage_error(cmd, "-t: '%s' is neither none nor writeback", optarg);
                return IMG_EXIT_ERROR;
            }
            opt->no_cache = !strcmp(optarg, "none");
            break;
        case 'w': opt->write = true; break;
        case OPT_PATTERN:
            if (strcmp(optarg, "rand") && strcmp(optarg, "seq")) {
                img_usage_error(cmd, "--pattern: '%s' is neither rand nor seq", optarg);
                return IMG_EXIT_ERROR;
            }
            opt->sequential = !strcmp(optarg, "seq");
            break;
        case 's':
            if (!img_parse_size_option(cmd, "-s", optarg, &opt->bs))
                return IMG_EXIT_ERROR;
            if (opt->bs == 0 || opt->bs % IMG_SECTOR || opt->bs > MAX_BS) {
                img_usage_error(cmd, "-s: %s is not a multiple of %u up to 64M", optarg,
                                IMG_SECTOR);
                return IMG_EXIT_ERROR;
            }
            break;
        case 'd':
            if (!cli_parse_u64(optarg, &value) || value < 1 || value > MAX_DEPTH) {
                img_usage_error(cmd, "-d: '%s' is not a depth from 1 to %u", optarg, MAX_DEPTH);
                return IMG_EXIT_ERROR;
            }
            opt->depth = (uint32_t)value;
            break;
        case 'c':
            if (!cli_parse_u64(optarg, &opt->count) || opt->count == 0) {
                img_usage_error(cmd, "-c: '%s' is not a positive count", optarg);
                return IMG_EXIT_ERROR;
            }
            have_count = true;
            break;
        case OPT_RUNTIME:
            if (!cli_parse_seconds(optarg, &opt->runtime_s) || !(opt->runtime_s > 0)) {
                img_usage_error(cmd, "--runtime: '%s' is not a positive duration", optarg);
                return IMG_EXIT_ERROR;
            }
            break;
        case OPT_OUTPUT:
            if (!img_parse_output(cmd, optarg, &opt->output))
                return IMG_EXIT_ERROR;
            break;
        case 'q': opt->quiet = true; break;
        case 'U': img_force_share = true; break;
        case 'h': fputs(usage_text, stdout); return IMG_EXIT_OK;
        default: img_bad_option(cmd, c, argv); return IMG_EXIT_ERROR;
        }
    }
    if (have_count && opt->runtime_s > 0) {
        img_usage_error(cmd, "-c and --runtime exclude each other");
        return IMG_EXIT_ERROR;
    }
    if (img_force_share && opt->write) {
        img_usage_error(cmd, "-U reads without a lock; -w writes, which needs one");
        return IMG_EXIT_ERROR;
    }
    if (!have_count && opt->runtime_s == 0)
        opt->count = DEFAULT_COUNT;
    if (argc - optind != 1) {
        img_usage_error(cmd, argc - optind ? "exactly one FILE is expected" : "FILE is missing");
        return IMG_EXIT_ERROR;
    }
    opt->path = argv[optind];
    return -1;
}

int img_bench_main(int argc, char **argv)
{
    static struct img_bench bench; /* holds the histograms: keep it off the stack */
    struct bench_options opt = {.no_cache = true, .bs = 4096, .depth = 32};
    struct results results;
    int status = parse_options(argc, argv, &opt);

    if (status >= 0) {
        img_free_options(opt.open_options);
        return status;
    }
    if (opt.open_options != NULL && opt.format == NULL) {
        img_usage_error(argv[0], "-o needs -f: open options belong to a format");
        img_free_options(opt.open_options);
        return IMG_EXIT_ERROR;
    }
    if (RT_FAILURE(setup(&bench, &opt))) {
        teardown(&bench, true);
        img_free_options(opt.open_options);
        return IMG_EXIT_ERROR;
    }
    if (opt.write && !opt.quiet)
        fprintf(stderr, "%s: warning: -w overwrites data in %s\n", PROG, opt.path);
    img_install_stop_handler();
    if (opt.output == OUTPUT_HUMAN)
        print_header(&bench);
    status = run_workload(&bench);
    if (status == IMG_EXIT_OK) {
        bench_compute_results(&bench.m, &results);
        print_report(&bench, &results);
        if (bench.stopped_by)
            status = 128 + bench.stopped_by;
    }
    teardown(&bench, bench.in_flight == 0);
    img_free_options(opt.open_options);
    return status;
}
