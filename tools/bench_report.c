/*
 * Benchmark measurement and report; see bench_report.h.
 *
 * Latency is whatever the caller records per request (submit to completion, as the
 * application sees it).  CPU is that of the whole process, every thread (the library's
 * workers included): getrusage(RUSAGE_SELF) user + system time when the window opens
 * and when it closes, divided by the I/Os counted.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "bench_report.h"
#include "cli_common.h"

const char *const dir_names[DIR_COUNT] = {"read", "write"};

/* ------------------------------------------------------------------------------------
 * Histogram.
 */

void hist_init(struct histogram *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

static unsigned hist_index(uint64_t value)
{
    unsigned exponent;

    if (value < 2 * HIST_SUB)
        return (unsigned)value;
    exponent = 63u - (unsigned)__builtin_clzll(value) - HIST_SUB_BITS;
    return exponent * HIST_SUB + (unsigned)(value >> exponent);
}

/* The middle of a bucket: the value it stands for when read back. */
static uint64_t hist_bucket_value(unsigned index)
{
    unsigned exponent;
    uint64_t mantissa;

    if (index < 2 * HIST_SUB)
        return index;
    exponent = index / HIST_SUB - 1;
    mantissa = index - exponent * HIST_SUB;
    return (mantissa << exponent) + ((1ull << exponent) - 1) / 2;
}

void hist_record(struct histogram *h, uint64_t value)
{
    h->buckets[hist_index(value)]++;
    h->count++;
    h->sum += value;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
}

void hist_merge(struct histogram *into, const struct histogram *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->buckets[i] += from->buckets[i];
    into->count += from->count;
    into->sum += from->sum;
    if (from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
}

uint64_t hist_percentile(const struct histogram *h, double pct)
{
    uint64_t rank = (uint64_t)ceil(pct / 100.0 * (double)h->count);
    uint64_t seen = 0;

    if (h->count == 0)
        return 0;
    if (rank < 1)
        rank = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t value = hist_bucket_value(i);

            /* The extremes are known exactly; never report past them. */
            return value < h->min ? h->min : value > h->max ? h->max : value;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------------------------
 * The measured window.
 */

void bench_measure_init(struct bench_measure *m)
{
    memset(m, 0, sizeof(*m));
    for (int d = 0; d < DIR_COUNT; d++)
        hist_init(&m->stats[d].lat);
}

void bench_window_open(struct bench_measure *m, uint64_t now)
{
    m->window_start_ns = now;
    getrusage(RUSAGE_SELF, &m->usage_start);
}

void bench_window_close(struct bench_measure *m, uint64_t now)
{
    m->window_end_ns = now;
    getrusage(RUSAGE_SELF, &m->usage_end);
}

/* ------------------------------------------------------------------------------------
 * Results.
 */

static double timeval_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void summarize_latency(const struct histogram *h, struct lat_summary *lat)
{
    lat->min = h->count ? h->min : 0;
    lat->max = h->max;
    lat->mean = h->count ? (double)h->sum / (double)h->count : 0;
    lat->p50 = hist_percentile(h, 50);
    lat->p90 = hist_percentile(h, 90);
    lat->p99 = hist_percentile(h, 99);
    lat->p999 = hist_percentile(h, 99.9);
    lat->p9999 = hist_percentile(h, 99.99);
}

static void summarize_dir(const struct histogram *h, uint64_t bytes, double elapsed,
                          struct dir_result *r)
{
    r->ios = h->count;
    r->bytes = bytes;
    r->iops = elapsed > 0 ? (double)h->count / elapsed : 0;
    r->mib_s = elapsed > 0 ? (double)bytes / MIB / elapsed : 0;
    summarize_latency(h, &r->lat);
}

void bench_compute_results(const struct bench_measure *m, struct results *r)
{
    /* Too big for the stack of a small tool; built once, after the run. */
    static struct histogram all;
    uint64_t all_bytes = 0;
    double cpu_s;

    memset(r, 0, sizeof(*r));
    r->elapsed_s = cli_ns_to_s(m->window_end_ns - m->window_start_ns);
    hist_init(&all);
    for (int d = 0; d < DIR_COUNT; d++) {
        summarize_dir(&m->stats[d].lat, m->stats[d].bytes, r->elapsed_s, &r->dir[d]);
        hist_merge(&all, &m->stats[d].lat);
        all_bytes += m->stats[d].bytes;
    }
    summarize_dir(&all, all_bytes, r->elapsed_s, &r->total);

    r->cpu_user_s = timeval_s(m->usage_end.ru_utime) - timeval_s(m->usage_start.ru_utime);
    r->cpu_sys_s = timeval_s(m->usage_end.ru_stime) - timeval_s(m->usage_start.ru_stime);
    cpu_s = r->cpu_user_s + r->cpu_sys_s;
    r->cpu_util_pct = r->elapsed_s > 0 ? 100.0 * cpu_s / r->elapsed_s : 0;
    r->cpu_us_per_io = r->total.ios ? cpu_s * 1e6 / (double)r->total.ios : 0;
    r->submit_calls = m->submit_calls;
    r->wait_calls = m->wait_calls;
    r->reqs_per_submit = m->submit_calls ? (double)r->total.ios / (double)m->submit_calls : 0;
    r->reqs_per_wait = m->wait_calls ? (double)r->total.ios / (double)m->wait_calls : 0;
}

/* ------------------------------------------------------------------------------------
 * Text report.
 */

static void print_throughput_row(const char *name, const struct dir_result *r)
{
    printf("  %-6s %12" PRIu64 " %12.1f %10.1f\n", name, r->ios, r->iops, r->mib_s);
}

static void print_latency_row(const char *name, const struct lat_summary *l)
{
    printf("  %-6s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", name, (double)l->min / 1e3,
           l->mean / 1e3, (double)l->p50 / 1e3, (double)l->p99 / 1e3, (double)l->p999 / 1e3,
           (double)l->p9999 / 1e3, (double)l->max / 1e3);
}

void bench_print_human_results(const struct results *r, const bool in_workload[DIR_COUNT],
                               bool mixed, bool stopped_early)
{
    printf("results over %.2f s%s\n", r->elapsed_s,
           stopped_early ? " (stopped early by a signal)" : "");
    printf("  %-6s %12s %12s %10s\n", "", "ios", "IOPS", "MiB/s");
    for (int d = 0; d < DIR_COUNT; d++)
        if (in_workload[d])
            print_throughput_row(dir_names[d], &r->dir[d]);
    if (mixed)
        print_throughput_row("total", &r->total);

    printf("\nlatency, submit to reap, in microseconds\n");
    printf("  %-6s %9s %9s %9s %9s %9s %9s %9s\n", "", "min", "mean", "p50", "p99", "p99.9",
           "p99.99", "max");
    for (int d = 0; d < DIR_COUNT; d++)
        if (in_workload[d])
            print_latency_row(dir_names[d], &r->dir[d].lat);
    if (mixed)
        print_latency_row("total", &r->total.lat);

    printf("\ncpu       %.2f \xc2\xb5s/IO for the whole process (user %.2f s, system %.2f s, "
           "%.1f%% of one CPU)\n",
           r->cpu_us_per_io, r->cpu_user_s, r->cpu_sys_s, r->cpu_util_pct);
    printf("calls     %" PRIu64 " submits (%.1f requests each), %" PRIu64
           " waits (%.1f requests each)\n",
           r->submit_calls, r->reqs_per_submit, r->wait_calls, r->reqs_per_wait);
    printf("errors    0\n");
}

/* ------------------------------------------------------------------------------------
 * JSON report.
 */

static void json_latency(const struct lat_summary *l)
{
    printf("{\"min\": %" PRIu64 ", \"mean\": %.1f, \"p50\": %" PRIu64 ", \"p90\": %" PRIu64
           ", \"p99\": %" PRIu64 ", \"p99.9\": %" PRIu64 ", \"p99.99\": %" PRIu64
           ", \"max\": %" PRIu64 "}",
           l->min, l->mean, l->p50, l->p90, l->p99, l->p999, l->p9999, l->max);
}

static void json_dir(const char *name, const struct dir_result *r)
{
    printf("    \"%s\": {\"ios\": %" PRIu64 ", \"bytes\": %" PRIu64
           ", \"iops\": %.3f, \"mib_per_s\": %.3f,\n      \"lat_ns\": ",
           name, r->ios, r->bytes, r->iops, r->mib_s);
    json_latency(&r->lat);
    printf("},\n");
}

void bench_print_json_results(const struct results *r, int stopped_by)
{
    printf("  \"results\": {\n    \"elapsed_s\": %.6f, \"stopped_by_signal\": %d,\n"
           "    \"ios\": %" PRIu64 ", \"bytes\": %" PRIu64
           ", \"errors\": 0, \"iops\": %.3f, \"mib_per_s\": %.3f,\n"
           "    \"lat_ns\": ",
           r->elapsed_s, stopped_by, r->total.ios, r->total.bytes, r->total.iops, r->total.mib_s);
    json_latency(&r->total.lat);
    printf(",\n");
    for (int d = 0; d < DIR_COUNT; d++)
        json_dir(dir_names[d], &r->dir[d]);
    printf("    \"cpu\": {\"user_s\": %.6f, \"sys_s\": %.6f, \"util_pct\": %.2f, \"us_per_io\": "
           "%.4f},\n",
           r->cpu_user_s, r->cpu_sys_s, r->cpu_util_pct, r->cpu_us_per_io);
    printf("    \"calls\": {\"submit\": %" PRIu64 ", \"wait\": %" PRIu64
           ", \"reqs_per_submit\": %.3f, \"reqs_per_wait\": %.3f}\n  }\n",
           r->submit_calls, r->wait_calls, r->reqs_per_submit, r->reqs_per_wait);
}
