/*
 * What the command-line tools (vrt-bench, vrt-img) share: parsing of numbers, sizes and
 * durations, human-readable formatting, the pattern generator for written data, JSON
 * string output and a progress indicator.  Internal to tools/; not part of the library.
 */
#ifndef VRT_TOOLS_CLI_COMMON_H
#define VRT_TOOLS_CLI_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define NS_PER_SEC 1000000000ull
#define MIB        (1024.0 * 1024.0)

/** A plain unsigned decimal number, all of @a text, no sign.  False when it is not. */
bool cli_parse_u64(const char *text, uint64_t *value);

/** A byte count with an optional binary suffix: 4096, 4k, 4K, 4kb, 4KiB, 1g, 2T.
 *  False when @a text is not one, or it does not fit in 64 bits. */
bool cli_parse_size(const char *text, uint64_t *value);

/** A duration in seconds, decimals allowed, optional s/m/h suffix, at most a year. */
bool cli_parse_seconds(const char *text, double *seconds);

/** "4 KiB", "256 MiB", "1.5 GiB", "4097 B": exact when a whole number of units.
 *  Returns @a buf. */
const char *cli_format_size(char *buf, size_t room, uint64_t bytes);
/* @a bytes as qemu-img writes a size: three significant digits and a binary unit
 * ("0 B", "4.25 MiB", "1 GiB"). */
const char *cli_format_size_qemu(char *buf, size_t room, uint64_t bytes);

/** "123.4k", "1.2M", "980": a rate for a progress line.  Returns @a buf. */
const char *cli_format_count(char *buf, size_t room, double value);

double cli_ns_to_s(uint64_t ns);
uint64_t cli_s_to_ns(double seconds);

/** splitmix64: the next number of the generator whose state is @a state. */
uint64_t cli_prng_next(uint64_t *state);

/** Fills @a buf with random bytes none of which is zero, so that neither a
 *  zero-detecting device nor a deduplicating file system can skip the write. */
void cli_fill_pattern(void *buf, size_t len, uint64_t *prng);

/** Writes @a s to stdout as a JSON string literal, quotes included. */
void cli_json_string(const char *s);

/*
 * A progress indicator.  vrt-bench's is on stderr: on a terminal it redraws one line in
 * place ("\r\033[K<label>: 42%"), at most twice a second; anywhere else (a log file,
 * with progress forced on) it appends a line per whole percent.  vrt-img's is
 * qemu-img -p's, on stdout where scripts read it: "    (42.00/100%)\r" at each whole
 * percent, and a newline at the end.  A disabled indicator prints nothing.
 */
struct cli_progress {
    bool enabled;
    bool qemu_style; /* qemu-img's, on stdout */
    bool in_place;   /* stderr is a terminal */
    const char *label;
    uint64_t next_ms; /* in place: the next redraw */
    int last_percent; /* appending: the last line written */
};

void cli_progress_start(struct cli_progress *p, bool enabled, const char *label);
/** Starts qemu-img's indicator on stdout (see above). */
void cli_progress_start_qemu(struct cli_progress *p, bool enabled);
/** Shows @a done of @a total (a @a total of 0 counts as complete). */
void cli_progress_update(struct cli_progress *p, uint64_t done, uint64_t total);
/** Clears the in-place line, or writes the final 100% line (when @a complete) and, in
 *  qemu-img's style, the newline that ends it. */
void cli_progress_end(struct cli_progress *p, bool complete);

#endif /* VRT_TOOLS_CLI_COMMON_H */
