/*
 * Shared helpers of the command-line tools; see cli_common.h.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <rt/time.h>

#include "cli_common.h"

/* How often an in-place progress line is redrawn. */
#define PROGRESS_REDRAW_MS 500u

/* Text that strtoull/strtod would accept but a count must not start with. */
static bool bad_number_start(const char *text)
{
    return !text[0] || text[0] == '-' || text[0] == '+' || text[0] == ' ';
}

bool cli_parse_u64(const char *text, uint64_t *value)
{
    char *end;
    unsigned long long parsed;

    if (bad_number_start(text))
        return false;
    errno = 0;
    parsed = strtoull(text, &end, 10);
    if (errno || *end)
        return false;
    *value = parsed;
    return true;
}

bool cli_parse_size(const char *text, uint64_t *value)
{
    static const char units[] = "kmgt";
    char *end;
    const char *unit;
    unsigned long long parsed;
    unsigned shift = 0;

    if (bad_number_start(text))
        return false;
    errno = 0;
    parsed = strtoull(text, &end, 10);
    if (errno || end == text)
        return false;
    if (*end) {
        unit = strchr(units, end[0] | 0x20);
        if (!unit || !end[0])
            return false;
        shift = 10 * (unsigned)(unit - units + 1);
        end++;
        if (strcasecmp(end, "") && strcasecmp(end, "b") && strcasecmp(end, "ib"))
            return false;
    }
    if (parsed > (UINT64_MAX >> shift))
        return false;
    *value = (uint64_t)parsed << shift;
    return true;
}

bool cli_parse_seconds(const char *text, double *seconds)
{
    char *end;
    double parsed;
    double scale = 1.0;

    if (bad_number_start(text))
        return false;
    errno = 0;
    parsed = strtod(text, &end);
    if (errno || end == text || !isfinite(parsed))
        return false;
    if (!strcmp(end, "m"))
        scale = 60.0;
    else if (!strcmp(end, "h"))
        scale = 3600.0;
    else if (strcmp(end, "") && strcmp(end, "s"))
        return false;
    *seconds = parsed * scale;
    /* A year is plenty, and keeps seconds * 1e9 far inside uint64_t. */
    return *seconds <= 366.0 * 24 * 3600;
}

static const char *const binary_units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};

/* @a bytes in the largest binary unit that keeps it below @a limit (1024, or 1000 for
 * at most three digits before the point); *@a unit receives the unit's name. */
static double scale_binary(uint64_t bytes, double limit, const char **unit)
{
    unsigned u = 0;
    double scaled = (double)bytes;
    while (scaled >= limit && u + 1 < sizeof(binary_units) / sizeof(binary_units[0])) {
        scaled /= 1024.0;
        u++;
    }
    *unit = binary_units[u];
    return scaled;
}

const char *cli_format_size(char *buf, size_t room, uint64_t bytes)
{
    const char *unit;
    double scaled = scale_binary(bytes, 1024.0, &unit);
    if (scaled == floor(scaled))
        snprintf(buf, room, "%.0f %s", scaled, unit);
    else
        snprintf(buf, room, "%.1f %s", scaled, unit);
    return buf;
}

const char *cli_format_size_qemu(char *buf, size_t room, uint64_t bytes)
{
    const char *unit;
    double scaled = scale_binary(bytes, 1000.0, &unit);
    snprintf(buf, room, "%0.3g %s", scaled, unit);
    return buf;
}

const char *cli_format_count(char *buf, size_t room, double value)
{
    if (value >= 1e6)
        snprintf(buf, room, "%.1fM", value / 1e6);
    else if (value >= 1e3)
        snprintf(buf, room, "%.1fk", value / 1e3);
    else
        snprintf(buf, room, "%.0f", value);
    return buf;
}

double cli_ns_to_s(uint64_t ns)
{
    return (double)ns / (double)NS_PER_SEC;
}

uint64_t cli_s_to_ns(double seconds)
{
    return (uint64_t)llround(seconds * (double)NS_PER_SEC);
}

/* splitmix64: one add and two multiplies per number, good enough to spread offsets. */
uint64_t cli_prng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void cli_fill_pattern(void *buf, size_t len, uint64_t *prng)
{
    uint64_t *words = buf;
    unsigned char *tail = buf;

    for (size_t i = 0; i < len / 8; i++)
        words[i] = cli_prng_next(prng) | 0x0101010101010101ull;
    for (size_t i = len / 8 * 8; i < len; i++)
        tail[i] = 0xa5;
}

void cli_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

void cli_progress_start(struct cli_progress *p, bool enabled, const char *label)
{
    p->enabled = enabled;
    p->in_place = isatty(STDERR_FILENO);
    p->label = label;
    p->next_ms = 0;
    p->last_percent = -1;
}

void cli_progress_start_qemu(struct cli_progress *p, bool enabled)
{
    cli_progress_start(p, enabled, "");
    p->qemu_style = true;
    p->in_place = false;
    cli_progress_update(p, 0, 1); /* qemu-img shows 0.00 before the first byte */
}

void cli_progress_update(struct cli_progress *p, uint64_t done, uint64_t total)
{
    double percent = total ? 100.0 * (double)done / (double)total : 100.0;

    if (!p->enabled)
        return;
    if (p->qemu_style) {
        if ((int)percent <= p->last_percent)
            return;
        p->last_percent = (int)percent;
        printf("    (%.2f/100%%)\r", (double)p->last_percent);
        fflush(stdout);
        return;
    }
    if (p->in_place) {
        if (rt_time_milli_ts() < p->next_ms)
            return;
        fprintf(stderr, "\r\033[K%s: %.0f%%", p->label, percent);
        p->next_ms = rt_time_milli_ts() + PROGRESS_REDRAW_MS;
        return;
    }
    if ((int)percent <= p->last_percent)
        return;
    p->last_percent = (int)percent;
    fprintf(stderr, "    (%.2f/100%%)\n", (double)p->last_percent);
}

void cli_progress_end(struct cli_progress *p, bool complete)
{
    if (!p->enabled)
        return;
    if (p->in_place)
        fputs("\r\033[K", stderr);
    else if (complete)
        cli_progress_update(p, 1, 1);
    if (p->qemu_style) {
        putchar('\n');
        fflush(stdout);
    }
}
