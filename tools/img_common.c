/*
 * vrt-img: what the subcommands share -- usage errors, opening images, reporting
 * failed calls, the -o create options, zero detection, stop signals.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <rt/err.h>

#include "cli_common.h"
#include "img.h"

void img_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s %s: ", PROG, cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s %s --help' for more information.\n", PROG, cmd);
}

void img_bad_option(const char *cmd, int c, char **argv)
{
    const char *arg = argv[optind - 1];

    if (c == ':') {
        img_usage_error(cmd, "option '%s' needs a value", arg);
        return;
    }
    if (optopt && arg[0] == '-' && arg[1] != '-')
        img_usage_error(cmd, "unknown option '-%c'", optopt);
    else
        img_usage_error(cmd, "unknown option '%s'", arg);
}

bool img_parse_output(const char *cmd, const char *text, enum img_output *output)
{
    if (!strcmp(text, "human"))
        *output = OUTPUT_HUMAN;
    else if (!strcmp(text, "json"))
        *output = OUTPUT_JSON;
    else {
        img_usage_error(cmd, "--output: '%s' is neither human nor json", text);
        return false;
    }
    return true;
}

bool img_parse_size_option(const char *cmd, const char *option, const char *text, uint64_t *value)
{
    if (img_parse_size(text, value))
        return true;
    img_usage_error(cmd,
                    "%s: '%s' is not a size (a number of bytes, optionally with a fraction "
                    "and one of the suffixes b, k, M, G, T, P, E: e.g. 1.5G)",
                    option, text);
    return false;
}

void img_report(const char *what, int rc, const rt_vd_error_t *err)
{
    const char *text = rt_strerror(rc);
    /* The status's words without their examples ("... (e.g. O_DIRECT ...)"), which
     * would only mislead after a specific reason. */
    const char *example = strstr(text, " (");
    int generic = example ? (int)(example - text) : (int)strlen(text);

    /* The specific reason first; the status's generic words after it, and only when
     * the reason does not already say them ("creating 'a.vdi': a.vdi: file already
     * exists"). */
    if (err && err->msg[0] && strstr(err->msg, text))
        fprintf(stderr, "%s: %s: %s\n", PROG, what, err->msg);
    else if (err && err->msg[0])
        fprintf(stderr, "%s: %s: %s [%.*s]\n", PROG, what, err->msg, generic, text);
    else
        fprintf(stderr, "%s: %s: %s\n", PROG, what, text);
}

int img_open(rt_vd_t *vd, const char *path, const char *format, uint32_t flags, rt_vd_error_t *err)
{
    return img_open_with(vd, path, format, flags, NULL, err);
}

bool img_force_share;

int img_open_with(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
                  const char *const *options, rt_vd_error_t *err)
{
    rt_vd_error_t local = {{0}};
    char what[IMG_WHAT_MAX];
    int rc;

    if (!err)
        err = &local;
    *vd = RT_VD_NIL;
    if (!format && !(flags & RT_VD_OPEN_READ_ONLY)) {
        fprintf(stderr,
                "%s: %s: this command writes to the image, so its format must be given "
                "with -f (probing is allowed only for read-only opens: a guest could have "
                "written another format's header into a raw image)\n",
                PROG, path);
        return RT_ERR_INVALID_PARAMETER;
    }
    /* Following a backing file opens files the image names, not the user: allowed
     * only when the user named the format, and so showed they know what the file is.
     * A probed image that names one is refused by the library (RT_ERR_ACCESS_DENIED). */
    if (format && !(flags & RT_VD_OPEN_NO_BACKING))
        flags |= RT_VD_OPEN_ALLOW_BACKING;
    if (img_force_share && (flags & RT_VD_OPEN_READ_ONLY))
        flags |= RT_VD_OPEN_FORCE_SHARE;
    rc = rt_vd_open_with(vd, path, format, flags, options, err);
    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "cannot open '%s'", path);
        img_report(what, rc, err);
        if (rc == RT_ERR_VD_UNKNOWN_FORMAT && !format)
            fprintf(stderr, "  (name the format with -f if the probe cannot tell)\n");
        if (rc == RT_ERR_VD_LOCKED && (flags & RT_VD_OPEN_READ_ONLY))
            fprintf(stderr, "  (-U reads it anyway, without a lock: what it reads may be "
                            "changing)\n");
        if (rc == RT_ERR_ACCESS_DENIED && !format)
            fprintf(stderr, "  (a probed image's backing file is not followed: give -f to "
                            "follow its backing file)\n");
    }
    return rc;
}

int img_open_info(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
                  rt_vd_info_t *info)
{
    return img_open_info_with(vd, path, format, flags, NULL, info);
}

int img_open_info_with(rt_vd_t *vd, const char *path, const char *format, uint32_t flags,
                       const char *const *options, rt_vd_info_t *info)
{
    char what[IMG_WHAT_MAX];
    int rc = img_open_with(vd, path, format, flags, options, NULL);

    if (RT_FAILURE(rc))
        return rc;
    rc = rt_vd_get_info(*vd, info);
    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "reading the information of '%s'", path);
        img_report(what, rc, NULL);
        rt_vd_close(*vd);
        *vd = RT_VD_NIL;
    }
    return rc;
}

static const struct option inspect_options[] = {
    {"format", required_argument, NULL, 'f'},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"force-share", no_argument, NULL, 'U'},
    {"backing-chain", no_argument, NULL, OPT_BACKING_CHAIN},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

const char *img_parse_inspect_args(int argc, char **argv, const char *usage, const char **format,
                                   enum img_output *output, bool *backing_chain, int *status)
{
    const char *cmd = argv[0];
    int c;

    *status = IMG_EXIT_ERROR;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:Uh", inspect_options, NULL)) != -1) {
        switch (c) {
        case 'f': *format = optarg; break;
        case 'U': img_force_share = true; break;
        case OPT_OUTPUT:
            if (!img_parse_output(cmd, optarg, output))
                return NULL;
            break;
        case OPT_BACKING_CHAIN:
            if (backing_chain == NULL) {
                img_usage_error(cmd, "--backing-chain is an option of info only");
                return NULL;
            }
            *backing_chain = true;
            break;
        case 'h':
            fputs(usage, stdout);
            *status = IMG_EXIT_OK;
            return NULL;
        default: img_bad_option(cmd, c, argv); return NULL;
        }
    }
    if (argc - optind != 1) {
        img_usage_error(cmd, argc - optind ? "exactly one FILE is expected" : "FILE is missing");
        return NULL;
    }
    return argv[optind];
}

int img_close(rt_vd_t vd, const char *path)
{
    char what[IMG_WHAT_MAX];
    int rc = rt_vd_close(vd);

    if (RT_FAILURE(rc)) {
        snprintf(what, sizeof(what), "closing '%s'", path);
        img_report(what, rc, NULL);
    }
    return rc;
}

/* "on"/"off" and their qemu spellings. */
static bool parse_switch(const char *text, bool *on)
{
    static const char *const yes[] = {"on", "true", "yes", "1"};
    static const char *const no[] = {"off", "false", "no", "0"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!strcmp(text, yes[i])) {
            *on = true;
            return true;
        }
        if (!strcmp(text, no[i])) {
            *on = false;
            return true;
        }
    }
    return false;
}

bool img_set_create_name(const char *cmd, const char *option, const char *value, const char **name)
{
    char *copy;

    if (!value[0]) {
        img_usage_error(cmd, "%s: the name is empty", option);
        return false;
    }
    copy = strdup(value);
    if (!copy) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return false;
    }
    free((char *)*name); /* NULL, or an earlier copy from this function */
    *name = copy;
    return true;
}

void img_free_create_names(rt_vd_create_opts_t *opts)
{
    free((char *)opts->backing_file);
    free((char *)opts->backing_format);
    opts->backing_file = NULL;
    opts->backing_format = NULL;
    for (size_t i = 0; opts->options != NULL && opts->options[i] != NULL; i++)
        free((char *)opts->options[i]);
    free((void *)opts->options);
    opts->options = NULL;
}

/* A format's own option: kept as "key=value" for the library, which knows the format's
 * options and says what is wrong with one. */
static bool add_format_option(const char *key, const char *value, rt_vd_create_opts_t *opts)
{
    size_t n = 0;
    while (opts->options != NULL && opts->options[n] != NULL)
        n++;
    const char **grown = realloc((void *)opts->options, (n + 2) * sizeof(*grown));
    char *item = malloc(strlen(key) + strlen(value) + 2);
    if (grown == NULL || item == NULL) {
        free(item);
        if (grown != NULL)
            opts->options = grown;
        fprintf(stderr, "%s: out of memory\n", PROG);
        return false;
    }
    sprintf(item, "%s=%s", key, value);
    grown[n] = item;
    grown[n + 1] = NULL;
    opts->options = grown;
    return true;
}

static bool set_name(const char *cmd, const char *key, const char *value, const char **name)
{
    char option[48];

    snprintf(option, sizeof(option), "-o %s", key);
    return img_set_create_name(cmd, option, value, name);
}

/* One key=value of -o. */
static bool apply_create_option(const char *cmd, const char *key, const char *value,
                                rt_vd_create_opts_t *opts)
{
    uint64_t size;
    bool on;

    if (!strcmp(key, "static")) {
        if (!parse_switch(value, &on))
            goto bad_value;
        opts->flags = on ? opts->flags | RT_VD_CREATE_STATIC : opts->flags & ~RT_VD_CREATE_STATIC;
        return true;
    }
    if (!strcmp(key, "preallocation")) {
        if (!strcmp(value, "off"))
            opts->flags &= ~RT_VD_CREATE_STATIC;
        else if (!strcmp(value, "full") || !strcmp(value, "falloc"))
            opts->flags |= RT_VD_CREATE_STATIC;
        else
            goto bad_value;
        return true;
    }
    if (!strcmp(key, "block_size") || !strcmp(key, "cluster_size")) {
        if (!img_parse_size(value, &size) || size == 0 || size > UINT32_MAX)
            goto bad_value;
        opts->block_size = (uint32_t)size;
        return true;
    }
    if (!strcmp(key, "compat")) {
        if (!strcmp(value, "0.10") || !strcmp(value, "v2"))
            opts->version = 2;
        else if (!strcmp(value, "1.1") || !strcmp(value, "v3"))
            opts->version = 3;
        else
            goto bad_value;
        return true;
    }
    if (!strcmp(key, "backing_file"))
        return set_name(cmd, key, value, &opts->backing_file);
    if (!strcmp(key, "backing_fmt"))
        return set_name(cmd, key, value, &opts->backing_format);
    return add_format_option(key, value, opts);
bad_value:
    img_usage_error(cmd, "-o: invalid value '%s' for '%s' (try -o help)", value, key);
    return false;
}

/* Splits an option list as qemu-img does: items separated by single commas, ",," a
 * comma inside an item.  An empty list or an empty item (a stray comma) is refused, as
 * qemu-img refuses it ("Invalid option list"): nothing is silently dropped. */
static char **split_list(const char *cmd, const char *option, const char *text)
{
    size_t n = 1;
    for (const char *p = text; *p; p++)
        n += *p == ',';
    char **list = calloc(n + 1, sizeof(*list));
    char *item = malloc(strlen(text) + 1);
    if (list == NULL || item == NULL) {
        free(list);
        free(item);
        fprintf(stderr, "%s: out of memory\n", PROG);
        return NULL;
    }
    size_t used = 0, len = 0;
    for (const char *p = text;; p++) {
        if (*p == ',' && p[1] == ',') {
            item[len++] = *p++; /* an escaped comma */
            continue;
        }
        if (*p != ',' && *p != '\0') {
            item[len++] = *p;
            continue;
        }
        item[len] = '\0';
        if (len == 0) {
            img_usage_error(cmd, "%s: '%s' is not a valid option list (an empty item: a "
                                 "stray comma? write a comma in a value as ',,')",
                            option, text);
            goto fail;
        }
        if ((list[used++] = strdup(item)) == NULL) {
            fprintf(stderr, "%s: out of memory\n", PROG);
            goto fail;
        }
        len = 0;
        if (*p == '\0')
            break;
    }
    free(item);
    return list;

fail:
    free(item);
    img_free_options(list);
    return NULL;
}

bool img_parse_create_options(const char *cmd, const char *text, rt_vd_create_opts_t *opts,
                              bool *help)
{
    char **items = split_list(cmd, "-o", text);
    bool ok = items != NULL;

    for (size_t i = 0; ok && items[i] != NULL; i++) {
        char *item = items[i], *value = strchr(item, '=');

        if (!strcmp(item, "help") || !strcmp(item, "?")) {
            *help = true;
            continue;
        }
        if (!value) {
            img_usage_error(cmd, "-o: '%s' is not key=value", item);
            ok = false;
            break;
        }
        *value++ = '\0';
        ok = apply_create_option(cmd, item, value, opts);
    }
    img_free_options(items);
    return ok;
}

char **img_split_options(const char *cmd, const char *option, const char *text)
{
    char **list = split_list(cmd, option, text);
    for (size_t i = 0; list != NULL && list[i] != NULL; i++) {
        if (strchr(list[i], '=') == NULL || list[i][0] == '=') {
            img_usage_error(cmd, "%s: '%s' is not name=value", option, list[i]);
            img_free_options(list);
            return NULL;
        }
    }
    return list;
}

void img_free_options(char **options)
{
    for (size_t i = 0; options != NULL && options[i] != NULL; i++)
        free(options[i]);
    free(options);
}

void img_print_create_options_help(void)
{
    fputs("Supported -o options (key=value, comma-separated):\n"
          "  static=on|off                    allocate every block at creation (VDI\n"
          "                                   \"static\"; raw: reserve the space)\n"
          "  preallocation=off|falloc|full    falloc and full: the same as static=on\n"
          "  block_size=SIZE                  allocation unit, a power of two (VDI block:\n"
          "                                   default 1M; QCOW2 cluster, 512..2M: default\n"
          "                                   64k); cluster_size is an alias\n"
          "  compat=0.10|1.1                  QCOW2 version 2 or 3 (default 1.1)\n"
          "  backing_file=NAME                QCOW2 backing file (relative to the image)\n"
          "  backing_fmt=FMT                  the backing file's format, recorded in the\n"
          "                                   image (readers probe it when absent)\n",
          stdout);
    for (const char *const *f = rt_vd_formats(); *f != NULL; f++) {
        const rt_vd_option_t *o = rt_vd_format_options(*f, RT_VD_OPTIONS_CREATE);
        if (o == NULL || o->name == NULL)
            continue;
        printf("The %s format's own options:\n", *f);
        for (; o->name != NULL; o++)
            printf("  %s=%s\n      %s\n", o->name, o->value, o->help);
    }
}

bool img_is_zero(const void *buf, size_t len)
{
    const unsigned char *bytes = buf;

    /* The first byte checked alone, then the buffer against itself shifted by one:
     * memcmp runs at memory speed, no loop of ours touches every byte. */
    return len == 0 || (bytes[0] == 0 && memcmp(bytes, bytes + 1, len - 1) == 0);
}

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    if (stop_signal)
        _exit(128 + sig);
    stop_signal = sig;
}

void img_install_stop_handler(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int img_stop_requested(void)
{
    return stop_signal;
}

char *img_path_beside(const char *path, const char *name)
{
    const char *slash = strrchr(path, '/');
    int dir_len = name[0] != '/' && slash != NULL ? (int)(slash - path) + 1 : 0;
    size_t room = (size_t)dir_len + strlen(name) + 1;
    char *full = malloc(room);
    if (full != NULL)
        snprintf(full, room, "%.*s%s", dir_len, path, name);
    return full;
}

char *img_temp_beside(const char *path)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
    const char *base = path + dir_len;
    size_t room = strlen(path) + 32;
    char *tmp = malloc(room);
    if (tmp == NULL)
        return NULL;
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned char random[6];
        char suffix[7];
        if (getrandom(random, sizeof random, 0) != sizeof random)
            for (size_t i = 0; i < sizeof random; i++)
                random[i] = (unsigned char)(rand() + attempt);
        for (size_t i = 0; i < sizeof random; i++)
            suffix[i] = letters[random[i] % (sizeof letters - 1)];
        suffix[6] = '\0';
        snprintf(tmp, room, "%.*s.%s.vrt-%s", (int)dir_len, path, base, suffix);
        if (access(tmp, F_OK) != 0 && errno == ENOENT)
            return tmp;
    }
    free(tmp);
    errno = EEXIST;
    return NULL;
}

static int publish_new(const char *tmp, const char *path);

/* The folder holding @a path, opened for fsync; -1 when it cannot be. */
static int open_folder(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup(".");
    if (dir == NULL)
        return -1;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    return fd;
}

int img_publish(const char *tmp, const char *path, bool replace)
{
    if (replace) {
        if (rename(tmp, path) != 0)
            return errno;
    } else {
        int error = publish_new(tmp, path);
        if (error != 0)
            return error;
    }
    int fd = open_folder(path);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

/* Puts @a tmp at @a path, where nothing may be. */
static int publish_new(const char *tmp, const char *path)
{
#ifdef RENAME_NOREPLACE
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) != 0) {
        if (errno != EINVAL && errno != ENOSYS)
            return errno;
#else
    {
#endif
        /* No atomic no-replace rename here: link refuses an existing name, then the
         * temporary name goes. */
        if (link(tmp, path) != 0)
            return errno;
        unlink(tmp);
    }
    return 0;
}
