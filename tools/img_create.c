/*
 * vrt-img create: a new, empty image of a given format and size.
 *
 * An existing file is replaced, as qemu-img replaces it, but never in place: the image
 * is made beside it under a temporary name and renamed over it once complete, so a
 * failed create leaves the old file as it was.  Refused instead: a file another process
 * holds a lock on (QEMU locks the images it has open, as vrt's writers will), anything
 * but a regular file, and the new image's own backing file.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rt/err.h>
#include <rt/vd.h>

#include "cli_common.h"
#include "img.h"

static const char usage_text[] =
    "Usage: " PROG " create [-f FMT] [-b BACKING [-F BACKING_FMT]] [-o OPTIONS] [-q] FILE [SIZE]\n"
    "Create an image that reads as zeros (or as its backing file).  An existing FILE is\n"
    "replaced (atomically, once the new image is complete), unless a process holds a\n"
    "lock on it, it is not a regular file, or it is the new image's backing file.\n"
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
    "SIZE is in bytes, optionally with a fraction and a suffix b, k, M, G, T, P or E\n"
    "(powers of 1024; e.g. 1.5G), rounded up to a multiple of 512.  It may be left out\n"
    "when there is a backing file: the image then takes the backing file's size.\n";

static const struct option long_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"backing", required_argument, NULL, 'b'},
    {"backing-format", required_argument, NULL, 'F'},
    {"options", required_argument, NULL, 'o'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Does another process hold a lock on the open file @a fd (QEMU's image locks)? */
static bool locked_by_others(int fd)
{
    struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
#ifdef F_OFD_GETLK
    /* Reports OFD and traditional locks alike, and never our own descriptor's. */
    if (fcntl(fd, F_OFD_GETLK, &lock) == 0)
        return lock.l_type != F_UNLCK;
#endif
    return fcntl(fd, F_GETLK, &lock) == 0 && lock.l_type != F_UNLCK;
}

/* Is @a backing (as the image at @a path names it) the file @a st is? */
static bool is_own_backing(const char *path, const char *backing, const struct stat *st)
{
    char *resolved = img_path_beside(path, backing);
    struct stat bst;
    bool same = resolved != NULL && stat(resolved, &bst) == 0 && bst.st_dev == st->st_dev &&
                bst.st_ino == st->st_ino;
    free(resolved);
    return same;
}

/* Why the file at @a path must not be replaced, or NULL when it may be. */
static const char *why_not_replace(const char *path, const rt_vd_create_opts_t *opts,
                                   struct stat *st)
{
    if (S_ISLNK(st->st_mode))
        return "it is a symbolic link (name the file it points to)";
    if (!S_ISREG(st->st_mode))
        return "it is not a regular file";
    if (opts->backing_file != NULL && is_own_backing(path, opts->backing_file, st))
        return "it is the new image's backing file";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return strerror(errno);
    bool locked = locked_by_others(fd);
    close(fd);
    return locked ? "another process holds a lock on it (a running guest or a tool has it "
                    "open)"
                  : NULL;
}

/* Creates the image at a temporary name beside @a path, then renames it over the file
 * there (with its permissions and owner). */
static int create_replacing(const char *path, const char *format, const rt_vd_create_opts_t *opts,
                            const struct stat *st, rt_vd_error_t *err)
{
    char *tmp = img_temp_beside(path);
    if (tmp == NULL)
        return rt_err_from_errno(errno);
    int rc = rt_vd_create(tmp, format, opts, err);
    if (RT_SUCCESS(rc)) {
        if (chmod(tmp, st->st_mode & 07777) != 0 || (chown(tmp, st->st_uid, st->st_gid) != 0 &&
                                                     errno != EPERM))
            rc = rt_err_from_errno(errno);
    }
    if (RT_SUCCESS(rc)) {
        int error = img_publish(tmp, path, true);
        if (error != 0)
            rc = rt_err_from_errno(error);
    }
    if (RT_FAILURE(rc))
        unlink(tmp);
    free(tmp);
    return rc;
}

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
        /* Rounded up to a whole sector, as qemu-img does. */
        if (opts->size > UINT64_MAX - (IMG_SECTOR - 1)) {
            img_usage_error(cmd, "SIZE: %" PRIu64 " is not a size below 2^64 - 512",
                            opts->size);
            return IMG_EXIT_ERROR;
        }
        opts->size = (opts->size + IMG_SECTOR - 1) / IMG_SECTOR * IMG_SECTOR;
    }
    struct stat st;
    bool exists = lstat(path, &st) == 0;
    if (exists) {
        const char *why = why_not_replace(path, opts, &st);
        if (why != NULL) {
            fprintf(stderr, "%s: '%s' exists and is not replaced: %s\n", PROG, path, why);
            return IMG_EXIT_ERROR;
        }
    }
    if (!quiet)
        print_formatting(path, format, opts);
    rc = exists ? create_replacing(path, format, opts, &st, &err)
                : rt_vd_create(path, format, opts, &err);
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
