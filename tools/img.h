/*
 * vrt-img internals: what the subcommands (img_<command>.c) share with each other and
 * with the dispatcher (vrt-img.c).  Internal to tools/.
 *
 * Each subcommand is a function img_<command>_main(argc, argv) that receives argv with
 * argv[0] the command's name, parses its own options with getopt_long, and returns the
 * process exit status.  What they all need -- option errors, opening an image under the
 * probing rule, reporting a failed library call, the -o list of create options -- lives
 * in img_common.c.
 */
#ifndef VRT_TOOLS_IMG_H
#define VRT_TOOLS_IMG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rt/vd.h>

#define PROG "vrt-img"

/* Exit statuses shared by every command (check and compare add their own, as qemu-img
 * does: see doc/vrt-img.md). */
#define IMG_EXIT_OK    0
#define IMG_EXIT_ERROR 1

/* Room for a message naming a file ("cannot open 'PATH'"). */
#define IMG_WHAT_MAX (PATH_MAX + 64)

/* The deepest backing chain a command walks (the library's limit). */
#define IMG_MAX_CHAIN 256u

/* Sector size the VD layer and every format count in. */
#define IMG_SECTOR 512u

/* Long-only options shared by several commands. */
enum img_long_option {
    OPT_OUTPUT = 256,
    OPT_PATTERN,
    OPT_RUNTIME,
    OPT_BACKING_CHAIN,
    OPT_HELP,
};

/* --output=human|json */
enum img_output { OUTPUT_HUMAN, OUTPUT_JSON };

/* The subcommands. */
int img_info_main(int argc, char **argv);
int img_create_main(int argc, char **argv);
int img_convert_main(int argc, char **argv);
int img_check_main(int argc, char **argv);
int img_compare_main(int argc, char **argv);
int img_map_main(int argc, char **argv);
int img_resize_main(int argc, char **argv);
int img_snapshot_main(int argc, char **argv);
int img_rebase_main(int argc, char **argv);
int img_commit_main(int argc, char **argv);
int img_measure_main(int argc, char **argv);
int img_bench_main(int argc, char **argv);

/**
 * Reports a usage error of command @a cmd on stderr, one line naming the bad option or
 * argument, plus a pointer to --help.  The caller returns @a status (1 for every
 * command except compare, whose "error" status is 2).
 */
void img_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/**
 * Reports what getopt_long returned for an unknown option or a missing argument
 * (call it for '?' and ':' with opterr = 0 and an optstring starting with ':').
 */
void img_bad_option(const char *cmd, int c, char **argv);

/** -U/--force-share: img_open() adds RT_VD_OPEN_FORCE_SHARE to read-only opens. */
extern bool img_force_share;

/** Parses --output's value; false (after reporting it) when it is neither. */
bool img_parse_output(const char *cmd, const char *text, enum img_output *output);

/**
 * Parses @a text as qemu-img reads a size (img_size.c): "1.5G", "512b", "64k", "2E".
 * False, with *@a value unchanged, when it is not one.
 */
bool img_parse_size(const char *text, uint64_t *value);

/** Parses a size option (-S, -s); false (after reporting it) when it is not one. */
bool img_parse_size_option(const char *cmd, const char *option, const char *text, uint64_t *value);

/**
 * Prints "vrt-img: <what>: <detail> [<status text>]" on stderr: the specific reason
 * first, the status's generic words (without their examples) after it, and only the
 * status text when there is no detail.
 */
void img_report(const char *what, int rc, const rt_vd_error_t *err);

/**
 * Opens an image the way every command must: with @a format NULL the format is probed,
 * which the library (rightly) allows only for read-only opens, so a writable open with
 * @a format NULL is refused here with a message asking for -f.  Backing files are
 * followed (RT_VD_OPEN_ALLOW_BACKING is added) only when @a format is given: a probed
 * image that names one fails with RT_ERR_ACCESS_DENIED and a hint to give -f.
 * Reports failures.
 *
 * @param err  optional; receives the library's message (check uses it).
 * @return the rt_vd_open() status.
 */
int img_open(rt_vd_t *vd, const char *path, const char *format, uint32_t flags, rt_vd_error_t *err);

/** img_open() with the format's open options ("name=value" strings ending with NULL;
 *  NULL: none), as rt_vd_open_with() takes them. */
int img_open_with(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
                  const char *const *options, rt_vd_error_t *err);

/** img_open(), then rt_vd_get_info() into @a info; on failure the image is closed,
 *  *vd is RT_VD_NIL and the problem reported. */
int img_open_info(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
                  rt_vd_info_t *info);

/** img_open_info() with the format's open options, as img_open_with(). */
int img_open_info_with(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
                       const char *const *options, rt_vd_info_t *info);

/**
 * Splits "a=1,b=2" into the NULL-terminated list the library takes; every item must be
 * name=value.  Returns NULL (reported as a usage error of @a cmd's @a option) when one
 * is not, or when out of memory; free the result with img_free_options().
 */
char **img_split_options(const char *cmd, const char *option, const char *text);
void img_free_options(char **options);

/**
 * Parses the arguments of the commands that only inspect one image (info, map):
 * -f FMT, --output=human|json, -U, --backing-chain (only where @a backing_chain is not
 * NULL), -h/--help (prints @a usage), and FILE.
 *
 * @return FILE, or NULL when the command is done: *status is then 0 (help printed)
 *         or 1 (a usage error, reported).
 */
const char *img_parse_inspect_args(int argc, char **argv, const char *usage, const char **format,
                                   enum img_output *output, bool *backing_chain, int *status);

/** Closes @a vd, reporting a failed final flush; returns the status. */
int img_close(rt_vd_t vd, const char *path);

/**
 * Parses one -o argument ("key=value[,key=value...]") into @a opts: static=on|off,
 * preallocation=off|falloc|full (falloc and full mean RT_VD_CREATE_STATIC),
 * block_size=SIZE (alias cluster_size), compat=0.10|1.1 (version 2|3),
 * backing_file=NAME, backing_fmt=FMT.  "-o help" lists them and sets *help.  Names are
 * copied (img_set_create_name), so @a text need not outlive @a opts.
 * @return false after reporting a bad key or value.
 */
bool img_parse_create_options(const char *cmd, const char *text, rt_vd_create_opts_t *opts,
                              bool *help);

/**
 * Stores a copy of @a value in *@a name (backing_file, backing_format of the create
 * options), replacing an earlier copy made here; img_free_create_names() frees them.
 * @a option names the option in a usage error (empty name, no memory).
 */
bool img_set_create_name(const char *cmd, const char *option, const char *value, const char **name);

/** Frees the names img_set_create_name() (and so -o) stored in @a opts. */
void img_free_create_names(rt_vd_create_opts_t *opts);

/** The create options in words, for "Formatting ..." and -o help. */
void img_print_create_options_help(void);

/**
 * @a name as the image at @a path means it: relative to @a path's folder unless it is
 * absolute (how backing file names resolve, and how qemu-img combines them).
 * @return a malloc'ed string, or NULL (out of memory).
 */
char *img_path_beside(const char *path, const char *name);

/**
 * A name for a new file beside @a path, in the same folder (so a rename can publish it
 * atomically): ".NAME.vrt-XXXXXX" with a random suffix, that does not exist yet.
 * @return a malloc'ed string, or NULL (out of memory).
 */
char *img_temp_beside(const char *path);

/**
 * Puts the finished file @a tmp in place at @a path, then makes the folder's entry
 * durable.  With @a replace a file at @a path is replaced atomically (rename); without,
 * it never is (renameat2 RENAME_NOREPLACE, or link and unlink where there is none).
 * On failure @a tmp is left for the caller.
 * @return 0, or an errno value (EEXIST: @a path exists and @a replace is false).
 */
int img_publish(const char *tmp, const char *path, bool replace);

/**
 * The internal snapshots of @a vd (img_snapshot.c) into a malloc'ed *@a out (NULL with
 * *@a count 0 when there are none, or the format has none).  Reports a failure.
 */
int img_list_snapshots(rt_vd_t vd, const char *path, rt_vd_snapshot_t **out, uint32_t *count);
/** qemu-img's "Snapshot list:" table (nothing when @a count is 0). */
void img_print_snapshots_human(const rt_vd_snapshot_t *sn, uint32_t count);
/** A JSON array of qemu-img info's snapshot objects, its lines indented by @a indent
 *  spaces after the first (no newline at the end). */
void img_print_snapshots_json(const rt_vd_snapshot_t *sn, uint32_t count, int indent);

/** True when @a buf (of @a len bytes) holds only zero bytes. */
bool img_is_zero(const void *buf, size_t len);

/**
 * SIGINT/SIGTERM ask long commands (convert, compare, bench) to stop cleanly: they poll
 * img_stop_requested() and clean up (convert removes its partial destination).  A
 * second signal ends the process at once.
 */
void img_install_stop_handler(void);
int img_stop_requested(void);

#endif /* VRT_TOOLS_IMG_H */
