/*
 * vrt-img: inspect, create, convert, check, compare, map, resize, rebase, commit,
 * measure, snapshot and benchmark disk images through vrt's virtual-disk API
 * (<rt/vd.h>), with qemu-img's commands, option letters, output shapes and exit
 * statuses where qemu-img has them.
 *
 * This file only dispatches: each command lives in img_<command>.c and parses its own
 * options; what they share is in img_common.c.  doc/vrt-img.md is the reference.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdio.h>
#include <string.h>

#include <rt/vd.h>

#include "cli_common.h"
#include "img.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *synopsis;
};

static const struct command commands[] = {
    {"info", img_info_main, "info [-f FMT] [-U] [--output=human|json] FILE"},
    {"create", img_create_main,
     "create [-f FMT] [-b BACKING [-F BACKING_FMT]] [-o OPTIONS] [-q] FILE [SIZE]"},
    {"convert", img_convert_main,
     "convert [-f FMT] [-O FMT] [-o OPTIONS] [-c] [-p] [-q] [-S SIZE] SRC DST"},
    {"check", img_check_main, "check [-f FMT] [-U] [--output=human|json] [-r leaks] [-q] FILE"},
    {"compare", img_compare_main, "compare [-f FMT] [-F FMT] [-p] [-q] [-s] [-U] FILE1 FILE2"},
    {"map", img_map_main, "map [-f FMT] [-U] [--output=human|json] FILE"},
    {"resize", img_resize_main, "resize -f FMT [--shrink [--force]] [-q] FILE [+|-]SIZE"},
    {"commit", img_commit_main, "commit -f FMT [-d] [-q] FILE"},
    {"measure", img_measure_main,
     "measure [--output=human|json] [-O FMT] [-o OPTIONS] (--size SIZE | [-f FMT] FILE)"},
    {"rebase", img_rebase_main, "rebase -f FMT [-u] [-q] -b BACKING [-F BACKING_FMT] FILE"},
    {"snapshot", img_snapshot_main,
     "snapshot [-f FMT] [-U] [-q] [-l | -c NAME | -a SNAPSHOT | -d SNAPSHOT] FILE"},
    {"bench", img_bench_main,
     "bench [-f FMT] [-t CACHE] [-w] [--pattern=rand|seq] [-s SIZE] [-d DEPTH]\n"
     "                [-c COUNT | --runtime SECONDS] [--output=human|json] [-U] FILE"},
};

#define COMMAND_COUNT (sizeof(commands) / sizeof(commands[0]))

static void print_usage(void)
{
    const char *const *formats = rt_vd_formats();

    printf("Usage: %s COMMAND [OPTION]... ARG...\n"
           "Inspect, create, convert, check, compare, map, resize, rebase, commit, measure,\n"
           "snapshot and benchmark disk images through vrt's virtual-disk API.\n\nCommands:\n",
           PROG);
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        printf("  %s\n", commands[i].synopsis);
    printf("\n'%s COMMAND --help' describes a command's options.\n\nFormats:", PROG);
    for (size_t i = 0; formats && formats[i]; i++)
        printf(" %s", formats[i]);
    printf("\n\nWithout -f the format is probed; commands that write to an image need -f,\n"
           "and so does an image with a backing file (only then is it followed).\n"
           "Exit status: 0 success, 1 error; check and compare have their own (see\n"
           "doc/vrt-img.md).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "%s: a command is needed\nTry '%s --help' for more information.\n", PROG,
                PROG);
        return IMG_EXIT_ERROR;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        print_usage();
        return IMG_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("%s (vrt) %s\n", PROG, PACKAGE_VERSION);
        return IMG_EXIT_OK;
    }
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "%s: unknown command '%s'\nTry '%s --help' for more information.\n", PROG,
            argv[1], PROG);
    return IMG_EXIT_ERROR;
}
