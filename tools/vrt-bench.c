/*
 * vrt-bench: runs an I/O workload through vrt's asynchronous file I/O API and reports
 * IOPS, bandwidth, per-I/O latency and CPU time per I/O, so the library can be compared
 * with fio on the same file.
 *
 * The engine
 * ----------
 * One thread drives one rt_aio_ctx of capacity --iodepth.  Each of the --iodepth
 * requests owns one page-aligned --bs buffer and is reused for the whole run:
 *
 *     prepare all --> submit (at most --batch per rt_aio_ctx_submit call)
 *         ^                         |
 *         |                         v
 *         +-- prepare again <-- rt_aio_ctx_wait(min 1, n iodepth): check each status,
 *                                record its latency
 *
 * Everything reaped goes straight back in, so the device sees --iodepth requests at
 * all times except the moment between a wait returning and the resubmit.  --batch only
 * caps how many requests one submit call carries (fio's iodepth_batch_submit).
 *
 * Time is split into a ramp (--ramp, not counted), the measured window (--runtime) and
 * a drain (requests still in flight when the window closes are reaped, checked and not
 * counted).  The window opens and closes when a wait returns; a request counts if the
 * wait that reaped it returned inside the window.
 *
 * Latency is per request, submit to reap: from just before the rt_aio_ctx_submit call
 * that carried it to just after the rt_aio_ctx_wait call that returned it, both read
 * with rt_time_nano_ts.  So it includes the library's submit path, the device, the
 * completion path, and any time the completion sat ready while this thread handled
 * others: what an application using the API sees.  It goes into a log-linear histogram
 * (bench_report.c: 128 linear steps per power of two, under 0.8 % error, nothing
 * allocated per I/O).
 *
 * CPU is that of the whole process, every thread (the library's workers for the threads
 * backend included): getrusage(RUSAGE_SELF) user + system time when the window opens
 * and when it closes, divided by the I/Os counted.  Work the kernel does in interrupt
 * context or in threads that are not the process's is not counted, as for fio.
 *
 * The file is laid out first (see prepare_target()) so that reads hit real blocks, and
 * its cached pages are dropped so that --direct=0 reads start cold, as fio does.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rt/err.h>
#include <rt/file.h>
#include <rt/fileaio.h>
#include <rt/mem.h>
#include <rt/time.h>

#include "bench_report.h"
#include "cli_common.h"

#define PROG "vrt-bench"

/* Exit statuses.  An interrupted run exits 128 + the signal number. */
#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

/* The longest --wait-timeout, in milliseconds (an hour). */
#define MAX_WAIT_TIMEOUT_MS 3600000u

/* How much the layout writes per call. */
#define LAYOUT_CHUNK (1024u * 1024u)

/* Linux moves at most 2 GiB - 4 KiB per read/write call; keep well below. */
#define MAX_BS             (1ull << 30)
#define MAX_IODEPTH        65536u
#define DIRECT_BS_MULTIPLE 512u

/* ------------------------------------------------------------------------------------
 * Options
 */

enum rw_mode { RW_READ, RW_WRITE, RW_RANDREAD, RW_RANDWRITE, RW_RANDRW };

struct rw_desc {
    const char *name;
    bool random;
    bool reads;
    bool writes;
};

static const struct rw_desc rw_descs[] = {
    [RW_READ] = {"read", false, true, false},
    [RW_WRITE] = {"write", false, false, true},
    [RW_RANDREAD] = {"randread", true, true, false},
    [RW_RANDWRITE] = {"randwrite", true, false, true},
    [RW_RANDRW] = {"randrw", true, true, true},
};

struct backend_desc {
    const char *name;
    uint32_t flag;
};

static const struct backend_desc backends[] = {
    {"linux-aio", RT_AIO_CTX_F_BACKEND_LINUX_AIO},
    {"io_uring", RT_AIO_CTX_F_BACKEND_IO_URING},
    {"threads", RT_AIO_CTX_F_BACKEND_THREADS},
};

struct options {
    const char *backend;   /* NULL: the library's choice */
    uint32_t backend_flag; /* 0 with backend NULL */
    enum rw_mode rw;
    unsigned rwmixread; /* percent of reads, randrw only */
    uint64_t bs;
    uint32_t iodepth;
    uint32_t batch; /* 0 until parsed: then defaults to iodepth */
    bool direct;
    bool fixedbufs;
    bool single_thread;       /* RT_AIO_CTX_F_SINGLE_THREAD */
    uint32_t wait_timeout_ms; /* per rt_aio_ctx_wait; RT_INDEFINITE_WAIT: none */
    const char *filename;     /* NULL: a temporary file */
    uint64_t size;
    double runtime_s;
    double ramp_s;
    bool json;
    bool quiet;
    uint64_t seed;
};

static const struct options default_options = {
    .rw = RW_RANDREAD,
    .rwmixread = 50,
    .bs = 4096,
    .iodepth = 32,
    .direct = true,
    .fixedbufs = true,
    .single_thread = true,
    .wait_timeout_ms = RT_INDEFINITE_WAIT,
    .size = 256ull << 20,
    .runtime_s = 10.0,
    .ramp_s = 1.0,
    .seed = 1,
};

static const char usage_text[] =
    "Usage: " PROG " [OPTION]...\n"
    "Run an I/O workload through vrt's asynchronous file I/O API (<rt/fileaio.h>) and\n"
    "report IOPS, bandwidth, per-I/O latency percentiles and CPU time per I/O.\n"
    "\n"
    "Workload:\n"
    "  -r, --rw=MODE        read, write (sequential, wrapping at --size), randread,\n"
    "                       randwrite or randrw (default: randread)\n"
    "      --rwmixread=PCT  randrw only: percentage of reads, 0..100 (default: 50)\n"
    "  -b, --bs=SIZE        bytes per I/O, at most 1g (default: 4k); a multiple of 512\n"
    "                       with --direct=1.  Offsets are multiples of it.\n"
    "  -d, --iodepth=N      requests kept in flight, 1..65536 (default: 32); also the\n"
    "                       capacity of the AIO context\n"
    "      --batch=N        at most N requests per rt_aio_ctx_submit call, 1..iodepth\n"
    "                       (default: iodepth, i.e. all that were reaped go back in one\n"
    "                       call)\n"
    "      --direct=0|1     1: bypass the page cache (RT_FILE_NO_CACHE, O_DIRECT);\n"
    "                       0: buffered I/O (default: 1)\n"
    "      --fixedbufs=0|1  1: register the I/O buffers with the context\n"
    "                       (rt_aio_ctx_register_buffers; io_uring maps them once as\n"
    "                       fixed buffers, other backends ignore it) (default: 1)\n"
    "      --single-thread=0|1  1: create the context RT_AIO_CTX_F_SINGLE_THREAD, as\n"
    "                       this program submits and waits from one thread (io_uring\n"
    "                       then completes requests without interrupting it, as\n"
    "                       fio's io_uring engine does); 0: any thread (default: 1)\n"
    "      --wait-timeout=MS  bound on each rt_aio_ctx_wait, 1..3600000 ms, or none to\n"
    "                       wait as fio does, for as long as it takes (default: none;\n"
    "                       SIGINT still ends the run at once, through\n"
    "                       rt_aio_ctx_wakeup)\n"
    "      --backend=NAME   linux-aio, io_uring or threads (default: the library's\n"
    "                       choice, which the RT_AIO_BACKEND environment variable can\n"
    "                       override); the report names the backend actually used\n"
    "      --seed=N         seed of the generator behind random offsets and the\n"
    "                       read/write mix (default: 1, so runs repeat)\n"
    "\n"
    "File:\n"
    "  -f, --filename=PATH  file or block device to run on (default: a temporary file\n"
    "                       in $TMPDIR, or /var/tmp when TMPDIR is unset; it is removed\n"
    "                       at exit, also on SIGINT/SIGTERM or a crash)\n"
    "  -s, --size=SIZE      bytes of the file the workload covers, from offset 0\n"
    "                       (default: 256m); at least --bs\n"
    "\n"
    "  Before the run the file is laid out with non-zero data so that it is not sparse:\n"
    "  the temporary file entirely, a user's file only from its current end up to\n"
    "  --size.  An existing file is never shrunk and, for read workloads, never written\n"
    "  below its end (it is even opened read-only).  Write workloads overwrite the\n"
    "  first --size bytes of an existing file or device; a warning says so.  A block\n"
    "  device is never laid out; it must be at least --size long.\n"
    "\n"
    "Time:\n"
    "  -t, --runtime=TIME   measured duration (default: 10); TIME is seconds, decimals\n"
    "                       allowed, optionally with an s, m or h suffix\n"
    "      --ramp=TIME      warm-up before the measured window, not counted (default: 1)\n"
    "      --time_based     accepted for fio compatibility: runs are always time based,\n"
    "                       for --ramp plus --runtime\n"
    "\n"
    "Output:\n"
    "  -j, --json           print one JSON object with every parameter and result on\n"
    "                       stdout, and nothing else there\n"
    "  -q, --quiet          no progress line and no notes on stderr (warnings and\n"
    "                       errors still appear)\n"
    "  -h, --help           print this text and exit\n"
    "  -V, --version        print the version and exit\n"
    "\n"
    "SIZE is a byte count, optionally with a k, m, g or t suffix (powers of 1024; kb and\n"
    "kib are read the same).  Options take their value as --opt=VALUE or --opt VALUE.\n"
    "\n"
    "While it runs, a progress line on stderr shows the last second's IOPS and MiB/s\n"
    "(only when stderr is a terminal, and not with --quiet or --json).\n"
    "\n"
    "Exit status: 0 success; 1 runtime error (cannot open or lay out the file, an I/O\n"
    "failed, a backend is missing); 2 usage error; 128+N when stopped by signal N (for\n"
    "SIGINT, 130; the part measured so far is still reported).\n"
    "\n"
    "Examples:\n"
    "  " PROG "                                  4k random reads, depth 32, 10 s\n"
    "  " PROG " --backend threads --direct 0     the thread-pool backend, buffered\n"
    "  " PROG " --rw randrw --rwmixread 70 --bs 16k --iodepth 64 --batch 8\n"
    "  " PROG " --filename /data/t.img --size 4g --runtime 30 --json > result.json\n"
    "\n"
    "The same workload in fio, for comparison (fio's defaults submit and reap one\n"
    "request per call; the batch options make it work as " PROG " does by default):\n"
    "  " PROG " --filename F --size 1g --runtime 5 --backend linux-aio\n"
    "  fio --name=x --filename=F --size=1g --rw=randread --bs=4k --iodepth=32 \\\n"
    "      --iodepth_batch_submit=32 --iodepth_batch_complete_max=32 \\\n"
    "      --direct=1 --ioengine=libaio --runtime=5 --ramp_time=1 --time_based\n"
    "\n"
    "See doc/vrt-bench.md for how latency and CPU are counted.\n";

static void print_usage(void)
{
    fputs(usage_text, stdout);
}

/* Reports a bad option value and exits with the usage status. */
static void usage_error(const char *option, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void usage_error(const char *option, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", PROG);
    if (option)
        fprintf(stderr, "%s: ", option);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", PROG);
    exit(EXIT_USAGE);
}

static uint64_t option_u64(const char *option, const char *text, uint64_t min, uint64_t max)
{
    uint64_t value;

    if (!cli_parse_u64(text, &value))
        usage_error(option, "'%s' is not a whole number", text);
    if (value < min || value > max)
        usage_error(option, "%s is out of range (%" PRIu64 "..%" PRIu64 ")", text, min, max);
    return value;
}

static uint64_t option_size(const char *option, const char *text)
{
    uint64_t value;

    if (!cli_parse_size(text, &value))
        usage_error(option, "'%s' is not a size (a byte count, optionally with k, m, g or t)",
                    text);
    return value;
}

static double option_seconds(const char *option, const char *text)
{
    double value;

    if (!cli_parse_seconds(text, &value))
        usage_error(option, "'%s' is not a duration (seconds, optionally with s, m or h)", text);
    return value;
}

static enum rw_mode option_rw(const char *text)
{
    for (size_t i = 0; i < sizeof(rw_descs) / sizeof(rw_descs[0]); i++)
        if (!strcmp(text, rw_descs[i].name))
            return (enum rw_mode)i;
    usage_error("--rw", "unknown mode '%s' (read, write, randread, randwrite or randrw)", text);
}

static const struct backend_desc *option_backend(const char *text)
{
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (!strcmp(text, backends[i].name))
            return &backends[i];
    usage_error("--backend", "unknown backend '%s' (linux-aio, io_uring or threads)", text);
}

/* Cross-option rules, checked once everything is parsed so that order does not matter. */
static void validate_options(struct options *opt)
{
    if (opt->batch == 0)
        opt->batch = opt->iodepth;
    if (opt->batch > opt->iodepth)
        usage_error("--batch", "%" PRIu32 " is more than --iodepth %" PRIu32, opt->batch,
                    opt->iodepth);
    if (opt->bs == 0)
        usage_error("--bs", "must be more than 0");
    if (opt->bs > MAX_BS)
        usage_error("--bs", "%" PRIu64 " is more than the 1g this tool allows", opt->bs);
    if (opt->direct && opt->bs % DIRECT_BS_MULTIPLE)
        usage_error("--bs", "%" PRIu64 " is not a multiple of %u, which --direct=1 needs", opt->bs,
                    DIRECT_BS_MULTIPLE);
    if (opt->size > INT64_MAX)
        usage_error("--size", "%" PRIu64 " is beyond the largest file offset", opt->size);
    if (opt->size < opt->bs)
        usage_error("--size", "%" PRIu64 " is smaller than --bs %" PRIu64, opt->size, opt->bs);
    if (!(opt->runtime_s > 0.0))
        usage_error("--runtime", "must be more than 0");
    if (opt->filename && !opt->filename[0])
        usage_error("--filename", "is empty");
}

enum long_only_option {
    OPT_RWMIXREAD = 256,
    OPT_BATCH,
    OPT_DIRECT,
    OPT_FIXEDBUFS,
    OPT_SINGLE_THREAD,
    OPT_WAIT_TIMEOUT,
    OPT_BACKEND,
    OPT_SEED,
    OPT_RAMP,
    OPT_TIME_BASED,
};

static const struct option long_options[] = {
    {"rw", required_argument, NULL, 'r'},
    {"rwmixread", required_argument, NULL, OPT_RWMIXREAD},
    {"bs", required_argument, NULL, 'b'},
    {"iodepth", required_argument, NULL, 'd'},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"direct", required_argument, NULL, OPT_DIRECT},
    {"fixedbufs", required_argument, NULL, OPT_FIXEDBUFS},
    {"single-thread", required_argument, NULL, OPT_SINGLE_THREAD},
    {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"seed", required_argument, NULL, OPT_SEED},
    {"filename", required_argument, NULL, 'f'},
    {"size", required_argument, NULL, 's'},
    {"runtime", required_argument, NULL, 't'},
    {"ramp", required_argument, NULL, OPT_RAMP},
    {"ramp_time", required_argument, NULL, OPT_RAMP}, /* fio's name */
    {"time_based", no_argument, NULL, OPT_TIME_BASED},
    {"json", no_argument, NULL, 'j'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* A 0|1 switch, as fio writes them. */
static bool option_bool(const char *name, const char *arg)
{
    if (strcmp(arg, "0") && strcmp(arg, "1"))
        usage_error(name, "'%s' must be 0 or 1", arg);
    return arg[0] == '1';
}

static void parse_options(int argc, char **argv, struct options *opt)
{
    const struct backend_desc *backend;
    int c;

    *opt = default_options;
    while ((c = getopt_long(argc, argv, "r:b:d:f:s:t:jqhV", long_options, NULL)) != -1) {
        switch (c) {
        case 'r': opt->rw = option_rw(optarg); break;
        case OPT_RWMIXREAD:
            opt->rwmixread = (unsigned)option_u64("--rwmixread", optarg, 0, 100);
            break;
        case 'b': opt->bs = option_size("--bs", optarg); break;
        case 'd': opt->iodepth = (uint32_t)option_u64("--iodepth", optarg, 1, MAX_IODEPTH); break;
        case OPT_BATCH: opt->batch = (uint32_t)option_u64("--batch", optarg, 1, MAX_IODEPTH); break;
        case OPT_DIRECT: opt->direct = option_bool("--direct", optarg); break;
        case OPT_FIXEDBUFS: opt->fixedbufs = option_bool("--fixedbufs", optarg); break;
        case OPT_SINGLE_THREAD: opt->single_thread = option_bool("--single-thread", optarg); break;
        case OPT_WAIT_TIMEOUT:
            opt->wait_timeout_ms =
                strcmp(optarg, "none") == 0
                    ? RT_INDEFINITE_WAIT
                    : (uint32_t)option_u64("--wait-timeout", optarg, 1, MAX_WAIT_TIMEOUT_MS);
            break;
        case OPT_BACKEND:
            backend = option_backend(optarg);
            opt->backend = backend->name;
            opt->backend_flag = backend->flag;
            break;
        case OPT_SEED: opt->seed = option_u64("--seed", optarg, 0, UINT64_MAX); break;
        case 'f': opt->filename = optarg; break;
        case 's': opt->size = option_size("--size", optarg); break;
        case 't': opt->runtime_s = option_seconds("--runtime", optarg); break;
        case OPT_RAMP: opt->ramp_s = option_seconds("--ramp", optarg); break;
        case OPT_TIME_BASED: break;
        case 'j': opt->json = true; break;
        case 'q': opt->quiet = true; break;
        case 'h': print_usage(); exit(0);
        case 'V': printf("%s (vrt) %s\n", PROG, PACKAGE_VERSION); exit(0);
        default: /* getopt_long has said what was wrong */
            fprintf(stderr, "Try '%s --help' for more information.\n", PROG);
            exit(EXIT_USAGE);
        }
    }
    if (optind < argc)
        usage_error(NULL, "unexpected argument '%s'", argv[optind]);
    validate_options(opt);
}

/* ------------------------------------------------------------------------------------
 * Small helpers: random numbers, formatting, notes.
 */

/* Status text with its name, for error messages: "input/output error (RT_ERR_IO)". */
static void print_status(int rc)
{
    fprintf(stderr, "%s (%s)\n", rt_strerror(rc), rt_status_name(rc));
}

/* ------------------------------------------------------------------------------------
 * Signals.
 *
 * The first SIGINT or SIGTERM asks the run to stop: the handler wakes the engine's wait
 * (rt_aio_ctx_wakeup is async-signal-safe), which drains and reports what it measured.
 * A second one exits at once.  The
 * temporary file is unlinked as soon as it is open, so no exit path can leave it behind;
 * only the few microseconds between creating and opening it need the handler's help.
 */

static volatile sig_atomic_t stop_signal;
static volatile sig_atomic_t temp_path_live;
static char temp_path[PATH_MAX];
/* The context whose wait a stop signal ends; NIL while there is none. */
static _Atomic(rt_aio_ctx_t) wake_on_signal;

static void on_stop_signal(int sig)
{
    int saved_errno = errno;
    rt_aio_ctx_t ctx;

    if (stop_signal) {
        if (temp_path_live)
            unlink(temp_path);
        _exit(128 + sig);
    }
    stop_signal = sig;
    ctx = atomic_load(&wake_on_signal);
    if (ctx != RT_AIO_CTX_NIL)
        rt_aio_ctx_wakeup(ctx);
    errno = saved_errno;
}

static void install_signal_handlers(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ------------------------------------------------------------------------------------
 * The target file: find or create it, lay it out, open it for the workload.
 */

struct target {
    const char *path;
    bool temporary; /* our own file, unlinked once open */
    bool is_device; /* a block device: never laid out */
    bool existed;   /* the user's path existed before the run */
    uint64_t size_before;
    uint64_t laid_out; /* bytes written while laying out */
    rt_file_t file;    /* opened for the workload */
};

/* Creates an empty temporary file; the caller opens and then unlinks it. */
static int create_temp_file(struct target *t)
{
    const char *dir = getenv("TMPDIR");
    int fd;

    if (!dir || !dir[0])
        dir = "/var/tmp";
    if ((size_t)snprintf(temp_path, sizeof(temp_path), "%s/%s.XXXXXX", dir, PROG) >=
        sizeof(temp_path)) {
        fprintf(stderr, "%s: temporary directory name too long: %s\n", PROG, dir);
        return EXIT_RUNTIME;
    }
    fd = mkstemp(temp_path);
    if (fd < 0) {
        fprintf(stderr,
                "%s: cannot create a temporary file in %s: %s\n"
                "  Set TMPDIR to a writable directory, or name a file with --filename.\n",
                PROG, dir, strerror(errno));
        return EXIT_RUNTIME;
    }
    temp_path_live = 1;
    close(fd);
    t->path = temp_path;
    t->temporary = true;
    return 0;
}

static void remove_temp_file(struct target *t)
{
    if (t->temporary && temp_path_live) {
        unlink(temp_path);
        temp_path_live = 0;
    }
}

/* Looks at the user's path: what it is and how big. */
static int inspect_user_file(const struct options *opt, struct target *t)
{
    struct stat st;

    t->path = opt->filename;
    if (stat(t->path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        fprintf(stderr, "%s: %s: %s\n", PROG, t->path, strerror(errno));
        return EXIT_RUNTIME;
    }
    t->existed = true;
    if (S_ISBLK(st.st_mode)) {
        t->is_device = true;
        return 0;
    }
    if (S_ISDIR(st.st_mode)) {
        fprintf(stderr, "%s: %s is a directory; --filename names a file or block device\n", PROG,
                t->path);
        return EXIT_RUNTIME;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "%s: %s: not a regular file or block device\n", PROG, t->path);
        return EXIT_RUNTIME;
    }
    t->size_before = (uint64_t)st.st_size;
    return 0;
}

/* Where layout starts: the temporary file entirely, a user's file from its end;
 * returns size when nothing needs writing. */
static uint64_t layout_start(const struct options *opt, const struct target *t)
{
    if (t->is_device)
        return opt->size;
    if (t->temporary)
        return 0;
    return t->size_before < opt->size ? t->size_before : opt->size;
}

static bool show_progress(const struct options *opt)
{
    return !opt->quiet && !opt->json && isatty(STDERR_FILENO);
}

/* Writes [from, size) with non-zero data, then makes it durable. */
static int lay_out(const struct options *opt, const struct target *t, rt_file_t file, uint64_t from)
{
    struct cli_progress progress;
    uint64_t prng = opt->seed ^ 0x6c61796f7574ull; /* "layout" */
    void *buf = rt_mem_page_alloc(LAYOUT_CHUNK);
    int rc = RT_OK;

    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return EXIT_RUNTIME;
    }
    cli_progress_start(&progress, show_progress(opt), "laying out");
    for (uint64_t off = from; off < opt->size && RT_SUCCESS(rc); off += LAYOUT_CHUNK) {
        size_t len = (size_t)(opt->size - off < LAYOUT_CHUNK ? opt->size - off : LAYOUT_CHUNK);

        if (stop_signal)
            break;
        cli_fill_pattern(buf, len, &prng);
        rc = rt_file_write_at(file, off, buf, len, NULL);
        cli_progress_update(&progress, off - from, opt->size - from);
    }
    cli_progress_end(&progress, false);
    rt_mem_page_free(buf, LAYOUT_CHUNK);
    if (RT_SUCCESS(rc) && !stop_signal)
        rc = rt_file_flush(file);
    if (RT_FAILURE(rc)) {
        fprintf(stderr, "%s: laying out %s failed: ", PROG, t->path);
        print_status(rc);
        return EXIT_RUNTIME;
    }
    return stop_signal ? 128 + stop_signal : 0;
}

static int open_workload_file(const struct options *opt, struct target *t)
{
    uint32_t flags = RT_FILE_OPEN | RT_FILE_ASYNC_IO;
    int rc;

    /* A read workload cannot damage the user's data if it cannot write at all. */
    flags |= rw_descs[opt->rw].writes ? RT_FILE_READWRITE : RT_FILE_READ;
    if (opt->direct)
        flags |= RT_FILE_NO_CACHE;
    rc = rt_file_open(&t->file, t->path, flags, 0);
    if (rc == RT_ERR_NOT_SUPPORTED && opt->direct) {
        fprintf(stderr,
                "%s: %s: the file system does not support direct I/O (O_DIRECT), which\n"
                "  --direct=1 (the default) needs.  Run with --direct=0 to go through the\n"
                "  page cache, or pick a file on another file system with --filename\n"
                "  (ext4, xfs and btrfs support it; tmpfs and some FUSE or network file\n"
                "  systems may not).\n",
                PROG, t->path);
        return EXIT_RUNTIME;
    }
    if (RT_FAILURE(rc)) {
        fprintf(stderr, "%s: cannot open %s: ", PROG, t->path);
        print_status(rc);
        return EXIT_RUNTIME;
    }
    return 0;
}

/* The usable length of the workload file; a block device's size comes from seeking,
 * since stat reports 0 for it. */
static int check_target_size(const struct options *opt, const struct target *t)
{
    uint64_t size = 0;
    int rc = rt_file_get_size(t->file, &size);
    char want[32], have[32];

    if (RT_FAILURE(rc)) {
        fprintf(stderr, "%s: cannot get the size of %s: ", PROG, t->path);
        print_status(rc);
        return EXIT_RUNTIME;
    }
    if (size == 0 && t->is_device) {
        off_t end = lseek((int)rt_file_to_native(t->file), 0, SEEK_END);

        size = end > 0 ? (uint64_t)end : 0;
    }
    if (size < opt->size) {
        fprintf(stderr, "%s: %s holds %s, less than --size %s\n", PROG, t->path,
                cli_format_size(have, sizeof(have), size),
                cli_format_size(want, sizeof(want), opt->size));
        return t->is_device ? EXIT_USAGE : EXIT_RUNTIME;
    }
    return 0;
}

static void warn_before_overwrite(const struct options *opt, const struct target *t)
{
    char size[32];

    if (!rw_descs[opt->rw].writes || t->temporary || !t->existed)
        return;
    if (!t->is_device && t->size_before == 0)
        return;
    fprintf(stderr, "%s: warning: --rw=%s overwrites the data in the first %s of %s\n", PROG,
            rw_descs[opt->rw].name, cli_format_size(size, sizeof(size), opt->size), t->path);
}

/* Drops the file's clean cached pages, so that a --direct=0 run starts cold (fio's
 * invalidate=1).  Advisory: a failure changes nothing that matters. */
static void drop_cached_pages(const struct target *t)
{
    (void)posix_fadvise((int)rt_file_to_native(t->file), 0, 0, POSIX_FADV_DONTNEED);
}

/*
 * Makes the target ready: it exists, is at least --size long, is not sparse where we
 * created it, and t->file is open for the workload.
 *
 * Layout goes through a separate buffered handle because it is plain sequential writing
 * and must work for any --size, aligned or not.  The workload handle is opened before
 * layout starts, so a file system that refuses O_DIRECT is reported at once, not after
 * writing gigabytes.
 */
static int prepare_target(const struct options *opt, struct target *t)
{
    rt_file_t layout_file = RT_FILE_NIL;
    uint64_t from;
    int status, rc;
    char size[32];

    status = opt->filename ? inspect_user_file(opt, t) : create_temp_file(t);
    if (status)
        return status;
    warn_before_overwrite(opt, t);
    from = layout_start(opt, t);
    if (from < opt->size) {
        rc = rt_file_open(&layout_file, t->path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0);
        if (RT_FAILURE(rc)) {
            fprintf(stderr, "%s: cannot open %s for writing: ", PROG, t->path);
            print_status(rc);
            status = EXIT_RUNTIME;
            goto out;
        }
    }
    status = open_workload_file(opt, t);
    remove_temp_file(t); /* both handles keep it alive until they close */
    if (status)
        goto out;
    if (from < opt->size) {
        if (!opt->quiet)
            fprintf(stderr, "%s: laying out %s of %s with non-zero data\n", PROG,
                    cli_format_size(size, sizeof(size), opt->size - from), t->path);
        status = lay_out(opt, t, layout_file, from);
        if (status)
            goto out;
        t->laid_out = opt->size - from;
    }
    status = check_target_size(opt, t);
    if (status)
        goto out;
    drop_cached_pages(t);
out:
    remove_temp_file(t);
    rt_file_close(layout_file);
    return status;
}

/* ------------------------------------------------------------------------------------
 * The engine.
 */

enum phase { PHASE_RAMP, PHASE_MEASURE, PHASE_DRAIN };

/* One request and what the engine knows about it. */
struct slot {
    rt_aio_req_t req;
    void *buf;
    uint64_t off;
    uint64_t submit_ns;
    enum dir dir;
};

struct bench {
    const struct options *opt;
    rt_file_t file;
    rt_aio_ctx_t ctx;
    const char *backend; /* what the context runs on */

    struct slot *slots;
    void *buffers;
    size_t buffers_size;
    /* Requests prepared and not yet submitted; also where wait puts what it reaps. */
    rt_aio_req_t *ready;
    uint32_t n_ready;
    uint32_t in_flight;

    uint64_t prng;
    uint64_t block_count; /* bs-sized blocks in [0, size) */
    uint64_t next_seq_off;

    enum phase phase;
    uint64_t ramp_end_ns, run_end_ns; /* run_end_ns is set when the window opens */
    bool measured;                    /* the window opened */
    bool failed;                      /* a request or call failed; already reported */
    int stopped_by;                   /* signal that ended the run early, or 0 */

    struct bench_measure m; /* the counts of the window */

    bool progress;
    uint64_t started_ns, next_progress_ns, progress_last_ns, progress_last_ios;
    uint64_t completed; /* all phases, for the progress line */
};

/* Picks where the next request goes and in which direction. */
static void choose_next_io(struct bench *b, struct slot *s)
{
    const struct options *opt = b->opt;
    const struct rw_desc *rw = &rw_descs[opt->rw];

    if (rw->reads && rw->writes)
        s->dir = cli_prng_next(&b->prng) % 100 < opt->rwmixread ? DIR_READ : DIR_WRITE;
    else
        s->dir = rw->writes ? DIR_WRITE : DIR_READ;

    if (rw->random) {
        s->off = cli_prng_next(&b->prng) % b->block_count * opt->bs;
    } else {
        s->off = b->next_seq_off;
        b->next_seq_off += opt->bs;
        if (b->next_seq_off > opt->size - opt->bs)
            b->next_seq_off = 0;
    }
}

static int prepare_slot(struct bench *b, struct slot *s)
{
    int rc;

    choose_next_io(b, s);
    if (s->dir == DIR_READ)
        rc = rt_aio_req_prepare_read(s->req, b->file, s->off, s->buf, b->opt->bs, s);
    else
        rc = rt_aio_req_prepare_write(s->req, b->file, s->off, s->buf, b->opt->bs, s);
    if (RT_FAILURE(rc)) {
        fprintf(stderr, "%s: preparing a %s at offset %" PRIu64 " failed: ", PROG,
                dir_names[s->dir], s->off);
        print_status(rc);
        b->failed = true;
    }
    return rc;
}

static int create_context(struct bench *b)
{
    const struct options *opt = b->opt;
    int rc = rt_aio_ctx_create(&b->ctx, opt->iodepth,
                               opt->backend_flag |
                                   (opt->single_thread ? RT_AIO_CTX_F_SINGLE_THREAD : 0));

    if (rc == RT_ERR_NOT_SUPPORTED) {
        const char *name = opt->backend ? opt->backend : getenv("RT_AIO_BACKEND");

        fprintf(stderr, "%s: the %s backend is not available on this host or in this build%s\n",
                PROG, name ? name : "requested",
                opt->backend ? "; try another --backend" : " (RT_AIO_BACKEND)");
        return EXIT_RUNTIME;
    }
    if (rc == RT_ERR_INVALID_PARAMETER && !opt->backend && getenv("RT_AIO_BACKEND")) {
        fprintf(stderr,
                "%s: the environment variable RT_AIO_BACKEND=%s names no backend "
                "(linux-aio, io_uring or threads)\n",
                PROG, getenv("RT_AIO_BACKEND"));
        return EXIT_RUNTIME;
    }
    if (RT_FAILURE(rc)) {
        fprintf(stderr, "%s: cannot create an AIO context for %" PRIu32 " requests: ", PROG,
                opt->iodepth);
        print_status(rc);
        return EXIT_RUNTIME;
    }
    b->backend = rt_aio_ctx_get_backend(b->ctx);
    if (!b->backend)
        b->backend = "unknown";
    rc = rt_aio_ctx_associate_with_file(b->ctx, b->file);
    if (RT_FAILURE(rc)) {
        fprintf(stderr, "%s: cannot associate the file with the AIO context: ", PROG);
        print_status(rc);
        return EXIT_RUNTIME;
    }
    atomic_store(&wake_on_signal, b->ctx);
    return 0;
}

/* Registers the buffers with the context (--fixedbufs), in regions of whole buffers
 * that the library takes (1 GiB each, at most MAX_REGIONS of them; buffers
 * beyond that simply stay unregistered).  A refusal costs speed only: say so and go
 * on. */
static void register_buffers(struct bench *b, size_t stride)
{
    enum { MAX_REGIONS = 64 }; /* 64 GiB of buffers; --iodepth x --bs beyond stays unregistered */
    size_t per_region = RT_AIO_MAX_REGISTERED_BUFFER_SIZE / stride;
    rt_iovec_t regions[MAX_REGIONS];
    size_t count = 0;
    int rc;

    if (per_region == 0)
        return; /* cannot happen: --bs is at most 1g */
    for (uint32_t first = 0; first < b->opt->iodepth && count < MAX_REGIONS;
         first += (uint32_t)per_region) {
        size_t n = b->opt->iodepth - first < per_region ? b->opt->iodepth - first : per_region;
        regions[count].base = b->slots[first].buf;
        regions[count++].len = n * stride;
    }
    rc = rt_aio_ctx_register_buffers(b->ctx, regions, count);
    if (RT_FAILURE(rc) && !b->opt->quiet) {
        fprintf(stderr, "%s: note: registering the I/O buffers failed, going on without: ", PROG);
        print_status(rc);
    }
}

/* One page-aligned region cut into --iodepth buffers, each starting on an alignment
 * boundary so that every one is valid for O_DIRECT. */
static int allocate_buffers(struct bench *b)
{
    const struct options *opt = b->opt;
    rt_aio_limits_t limits;
    size_t align = rt_mem_page_size();
    size_t stride;
    char size[32];

    if (RT_SUCCESS(rt_aio_get_limits(&limits)) && limits.buffer_alignment > align)
        align = limits.buffer_alignment;
    stride = (size_t)((opt->bs + align - 1) / align * align);
    if (stride > SIZE_MAX / opt->iodepth) {
        fprintf(stderr, "%s: --iodepth x --bs does not fit in memory\n", PROG);
        return EXIT_RUNTIME;
    }
    b->buffers_size = stride * opt->iodepth;
    b->buffers = rt_mem_page_alloc(b->buffers_size);
    if (!b->buffers) {
        fprintf(stderr, "%s: cannot allocate %s of I/O buffers (--iodepth x --bs)\n", PROG,
                cli_format_size(size, sizeof(size), b->buffers_size));
        return EXIT_RUNTIME;
    }
    for (uint32_t i = 0; i < opt->iodepth; i++)
        b->slots[i].buf = (char *)b->buffers + (size_t)i * stride;
    if (opt->fixedbufs)
        register_buffers(b, stride);
    return 0;
}

static int create_requests(struct bench *b)
{
    const struct options *opt = b->opt;
    uint64_t pattern = opt->seed ^ 0x7772697465ull; /* "write" */

    for (uint32_t i = 0; i < opt->iodepth; i++) {
        int rc = rt_aio_req_create(&b->slots[i].req);

        if (RT_FAILURE(rc)) {
            fprintf(stderr, "%s: cannot create request %" PRIu32 ": ", PROG, i);
            print_status(rc);
            return EXIT_RUNTIME;
        }
        /* Writes send whatever the buffer holds; give it non-zero data once. */
        if (rw_descs[opt->rw].writes)
            cli_fill_pattern(b->slots[i].buf, (size_t)opt->bs, &pattern);
    }
    return 0;
}

static int engine_setup(struct bench *b, const struct options *opt, rt_file_t file)
{
    int status;

    b->opt = opt;
    b->file = file;
    b->prng = opt->seed;
    b->block_count = opt->size / opt->bs;
    bench_measure_init(&b->m);
    b->slots = calloc(opt->iodepth, sizeof(*b->slots));
    b->ready = calloc(opt->iodepth, sizeof(*b->ready));
    if (!b->slots || !b->ready) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return EXIT_RUNTIME;
    }
    status = create_context(b);
    if (!status)
        status = allocate_buffers(b);
    if (!status)
        status = create_requests(b);
    return status;
}

/* The kernel runs only O_DIRECT transfers asynchronously: buffered requests on
 * linux-aio complete inside the submit call, one after another.  Numbers from such a
 * run measure that, not the device at --iodepth; say so rather than let them mislead. */
static void note_backend_caveats(const struct bench *b)
{
    if (b->opt->quiet || b->opt->direct || strcmp(b->backend, "linux-aio"))
        return;
    fprintf(stderr,
            "%s: note: linux-aio does buffered (--direct=0) I/O synchronously inside "
            "rt_aio_ctx_submit,\n  so the device sees one request at a time; "
            "--backend threads or io_uring queue it for real.\n",
            PROG);
}

static void engine_teardown(struct bench *b)
{
    if (b->slots) {
        for (uint32_t i = 0; i < b->opt->iodepth; i++)
            rt_aio_req_destroy(b->slots[i].req);
    }
    atomic_store(&wake_on_signal, RT_AIO_CTX_NIL);
    /* Busy only if a wait failed with requests in flight; the process exit then ends
     * them, and the buffers must stay mapped until it does. */
    if (RT_SUCCESS(rt_aio_ctx_destroy(b->ctx)))
        rt_mem_page_free(b->buffers, b->buffers_size);
    free(b->ready);
    free(b->slots);
}

static void open_window(struct bench *b, uint64_t now)
{
    bench_window_open(&b->m, now);
    b->run_end_ns = now + cli_s_to_ns(b->opt->runtime_s);
    b->measured = true;
    b->phase = PHASE_MEASURE;
    /* Progress ticks count whole seconds of the window. */
    b->next_progress_ns = now + NS_PER_SEC;
    b->progress_last_ns = now;
    b->progress_last_ios = b->completed;
}

/* Closes the window (if open) and stops resubmitting. */
static void close_window(struct bench *b, uint64_t now)
{
    if (b->phase == PHASE_MEASURE)
        bench_window_close(&b->m, now);
    b->phase = PHASE_DRAIN;
}

/* Submits everything ready, at most --batch per call. */
static int submit_ready(struct bench *b)
{
    while (b->n_ready > 0) {
        uint32_t n = b->n_ready < b->opt->batch ? b->n_ready : b->opt->batch;
        rt_aio_req_t *reqs = &b->ready[b->n_ready - n];
        uint64_t now = rt_time_nano_ts();
        int rc;

        for (uint32_t i = 0; i < n; i++)
            ((struct slot *)rt_aio_req_get_user(reqs[i]))->submit_ns = now;
        rc = rt_aio_ctx_submit(b->ctx, reqs, n);
        if (RT_FAILURE(rc)) {
            fprintf(stderr, "%s: submitting %" PRIu32 " requests failed: ", PROG, n);
            print_status(rc);
            b->failed = true;
            return rc;
        }
        b->n_ready -= n;
        b->in_flight += n;
        if (b->phase == PHASE_MEASURE)
            b->m.submit_calls++;
    }
    return RT_OK;
}

static void report_io_failure(const struct bench *b, const struct slot *s, int rc, size_t done)
{
    if (RT_FAILURE(rc)) {
        fprintf(stderr, "%s: %s of %" PRIu64 " bytes at offset %" PRIu64 " failed: ", PROG,
                dir_names[s->dir], b->opt->bs, s->off);
        print_status(rc);
        if (rc == RT_ERR_INVALID_PARAMETER && b->opt->direct)
            fprintf(stderr, "  With --direct=1 the file system may need --bs and offsets "
                            "aligned to its block size; try --bs 4k.\n");
    } else {
        fprintf(stderr,
                "%s: short %s: %zu of %" PRIu64 " bytes at offset %" PRIu64
                " (did the file shrink during the run?)\n",
                PROG, dir_names[s->dir], done, b->opt->bs, s->off);
    }
}

/* Checks one reaped request and, while the run goes on, prepares it again. */
static void complete_request(struct bench *b, rt_aio_req_t req, uint64_t now, bool counted)
{
    struct slot *s = rt_aio_req_get_user(req);
    size_t done = 0;
    int rc = rt_aio_req_get_rc(req, &done);

    b->in_flight--;
    b->completed++;
    if (RT_FAILURE(rc) || done != b->opt->bs) {
        if (!b->failed)
            report_io_failure(b, s, rc, done);
        b->failed = true;
        b->phase = PHASE_DRAIN;
        return;
    }
    if (counted) {
        b->m.stats[s->dir].ios++;
        b->m.stats[s->dir].bytes += done;
        hist_record(&b->m.stats[s->dir].lat, now - s->submit_ns);
    }
    if (b->phase != PHASE_DRAIN && RT_SUCCESS(prepare_slot(b, s)))
        b->ready[b->n_ready++] = req;
    else
        b->phase = PHASE_DRAIN;
}

/* Moves between ramp, window and drain according to the clock and to signals.  Returns
 * whether the completions just reaped at @a now count. */
static bool advance_phase(struct bench *b, uint64_t now)
{
    switch (b->phase) {
    case PHASE_RAMP:
        if (now >= b->ramp_end_ns)
            open_window(b, now); /* these completions belong to the ramp */
        break;
    case PHASE_MEASURE:
        if (now >= b->run_end_ns) {
            close_window(b, now); /* these completed inside the window: count them */
            return true;
        }
        break;
    case PHASE_DRAIN: break;
    }
    if (stop_signal && b->phase != PHASE_DRAIN) {
        b->stopped_by = stop_signal;
        close_window(b, now);
        return true;
    }
    return b->phase == PHASE_MEASURE;
}

static void print_progress(struct bench *b, uint64_t now)
{
    const struct options *opt = b->opt;
    double interval = cli_ns_to_s(now - b->progress_last_ns);
    double iops = interval > 0 ? (double)(b->completed - b->progress_last_ios) / interval : 0;
    char count[32];

    if (b->phase == PHASE_RAMP)
        fprintf(stderr, "\r\033[K[ramp %4.1fs/%gs]", cli_ns_to_s(now - b->started_ns), opt->ramp_s);
    else
        fprintf(stderr, "\r\033[K[%4.1fs/%gs]", cli_ns_to_s(now - b->m.window_start_ns),
                opt->runtime_s);
    fprintf(stderr, " %s IOPS  %.1f MiB/s", cli_format_count(count, sizeof(count), iops),
            iops * (double)opt->bs / MIB);
    b->progress_last_ns = now;
    b->progress_last_ios = b->completed;
    b->next_progress_ns = now + NS_PER_SEC;
}

/* Reaps what has completed.  Returns false when the wait itself failed. */
static bool reap(struct bench *b)
{
    uint32_t got = 0;
    int rc = rt_aio_ctx_wait(b->ctx, 1, b->opt->wait_timeout_ms, b->ready, b->opt->iodepth, &got);
    uint64_t now = rt_time_nano_ts();
    bool counted;

    /* A timeout with nothing back, or a stop signal's wakeup: look at the clock. */
    if (RT_FAILURE(rc) && rc != RT_ERR_TIMEOUT && rc != RT_ERR_INTERRUPTED) {
        fprintf(stderr, "%s: waiting for completions failed: ", PROG);
        print_status(rc);
        b->failed = true;
        return false;
    }
    counted = advance_phase(b, now);
    if (counted && got)
        b->m.wait_calls++;
    for (uint32_t i = 0; i < got; i++)
        complete_request(b, b->ready[i], now, counted);
    if (b->progress && now >= b->next_progress_ns && b->phase != PHASE_DRAIN)
        print_progress(b, now);
    return true;
}

/*
 * Runs ramp, window and drain.  The hot path (submit_ready, reap, complete_request)
 * allocates nothing and takes no lock of its own.
 */
static int run_workload(struct bench *b)
{
    const struct options *opt = b->opt;
    uint64_t now = rt_time_nano_ts();

    b->progress = show_progress(opt);
    b->started_ns = b->progress_last_ns = now;
    b->next_progress_ns = now + NS_PER_SEC;
    b->ramp_end_ns = now + cli_s_to_ns(opt->ramp_s);
    b->phase = PHASE_RAMP;
    if (opt->ramp_s <= 0)
        open_window(b, now);

    for (uint32_t i = 0; i < opt->iodepth; i++) {
        if (RT_FAILURE(prepare_slot(b, &b->slots[i])))
            return EXIT_RUNTIME;
        b->ready[b->n_ready++] = b->slots[i].req;
    }
    for (;;) {
        if (b->phase != PHASE_DRAIN && RT_FAILURE(submit_ready(b)))
            b->phase = PHASE_DRAIN;
        if (b->in_flight == 0)
            break;
        if (!reap(b))
            return EXIT_RUNTIME; /* cannot drain without a working wait */
    }
    if (b->progress)
        fputs("\r\033[K", stderr);
    if (b->failed)
        return EXIT_RUNTIME;
    if (b->stopped_by)
        return 128 + b->stopped_by;
    return 0;
}

/* ------------------------------------------------------------------------------------
 * Results and reports.
 */

/* Where the backend choice came from, for the header. */
static const char *backend_origin(const struct options *opt)
{
    const char *env = getenv("RT_AIO_BACKEND");

    if (opt->backend)
        return "--backend";
    if (env && env[0])
        return "RT_AIO_BACKEND";
    return "library's choice";
}

static void print_header(const struct bench *b, const struct target *t)
{
    const struct options *opt = b->opt;
    char bs[32], size[32], laid[32];

    printf("%s %s\n", PROG, PACKAGE_VERSION);
    printf("  backend   %s (%s)\n", b->backend, backend_origin(opt));
    printf("  workload  %s", rw_descs[opt->rw].name);
    if (opt->rw == RW_RANDRW)
        printf(" (%u%% reads)", opt->rwmixread);
    printf(", bs %s, iodepth %" PRIu32 ", batch %" PRIu32
           ", direct=%d, fixedbufs=%d, single-thread=%d\n",
           cli_format_size(bs, sizeof(bs), opt->bs), opt->iodepth, opt->batch, opt->direct,
           opt->fixedbufs, opt->single_thread);
    printf("  file      %s%s\n", t->path,
           t->temporary   ? " (temporary, removed at exit)"
           : t->is_device ? " (block device)"
                          : "");
    printf("  size      %s", cli_format_size(size, sizeof(size), opt->size));
    if (t->laid_out)
        printf(", %s laid out before the run", cli_format_size(laid, sizeof(laid), t->laid_out));
    printf("\n  runtime   %gs after %gs ramp, seed %" PRIu64 "\n", opt->runtime_s, opt->ramp_s,
           opt->seed);
    if (opt->wait_timeout_ms == RT_INDEFINITE_WAIT)
        printf("  waits     no timeout, as fio's\n\n");
    else
        printf("  waits     at most %" PRIu32 " ms each\n\n", opt->wait_timeout_ms);
    fflush(stdout);
}

static void print_human_report(const struct bench *b, const struct results *r)
{
    const struct rw_desc *rw = &rw_descs[b->opt->rw];
    const bool in_workload[DIR_COUNT] = {[DIR_READ] = rw->reads, [DIR_WRITE] = rw->writes};

    bench_print_human_results(r, in_workload, b->opt->rw == RW_RANDRW, b->stopped_by != 0);
}

static void print_json_report(const struct bench *b, const struct target *t,
                              const struct results *r)
{
    const struct options *opt = b->opt;

    printf("{\n  \"tool\": \"%s\",\n  \"version\": ", PROG);
    cli_json_string(PACKAGE_VERSION);
    printf(",\n  \"params\": {\n    \"backend\": ");
    cli_json_string(b->backend);
    printf(",\n    \"backend_requested\": ");
    if (opt->backend)
        cli_json_string(opt->backend);
    else
        printf("null");
    printf(",\n    \"rw\": \"%s\", \"rwmixread\": %u, \"bs\": %" PRIu64 ", \"iodepth\": %" PRIu32
           ", \"batch\": %" PRIu32 ", \"direct\": %s, \"fixedbufs\": %s, \"single_thread\": %s,"
           "\n    \"filename\": ",
           rw_descs[opt->rw].name,
           opt->rw == RW_RANDRW      ? opt->rwmixread
           : rw_descs[opt->rw].reads ? 100u
                                     : 0u,
           opt->bs, opt->iodepth, opt->batch, opt->direct ? "true" : "false",
           opt->fixedbufs ? "true" : "false", opt->single_thread ? "true" : "false");
    cli_json_string(t->path);
    printf(", \"temporary_file\": %s, \"block_device\": %s, \"size\": %" PRIu64
           ", \"laid_out_bytes\": %" PRIu64
           ",\n    \"runtime_s\": %g, \"ramp_s\": %g, \"seed\": %" PRIu64 ", \"wait_timeout_ms\": ",
           t->temporary ? "true" : "false", t->is_device ? "true" : "false", opt->size, t->laid_out,
           opt->runtime_s, opt->ramp_s, opt->seed);
    if (opt->wait_timeout_ms == RT_INDEFINITE_WAIT)
        printf("null\n  },\n");
    else
        printf("%" PRIu32 "\n  },\n", opt->wait_timeout_ms);
    bench_print_json_results(r, b->stopped_by);
    printf("}\n");
}

/* ------------------------------------------------------------------------------------
 * main
 */

int main(int argc, char **argv)
{
    static struct bench bench; /* holds the histograms: keep it off the stack */
    struct options opt;
    struct target target = {0};
    struct results results;
    int status;

    parse_options(argc, argv, &opt);
    install_signal_handlers();

    status = prepare_target(&opt, &target);
    if (status)
        goto out;
    status = engine_setup(&bench, &opt, target.file);
    if (status)
        goto out_engine;
    note_backend_caveats(&bench);
    if (!opt.json)
        print_header(&bench, &target);
    status = run_workload(&bench);
    if (status && !(bench.stopped_by && status == 128 + bench.stopped_by))
        goto out_engine; /* a failure: already reported, no results */
    if (!bench.measured) {
        fprintf(stderr, "%s: stopped during the ramp; nothing was measured\n", PROG);
        goto out_engine;
    }
    bench_compute_results(&bench.m, &results);
    if (opt.json)
        print_json_report(&bench, &target, &results);
    else
        print_human_report(&bench, &results);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "%s: writing the report failed: %s\n", PROG, strerror(errno));
        status = EXIT_RUNTIME;
    }
out_engine:
    engine_teardown(&bench);
out:
    rt_file_close(target.file);
    if (status == 0 && stop_signal)
        status = 128 + stop_signal;
    return status;
}
