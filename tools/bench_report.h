/*
 * Measuring a benchmark run and reporting it, shared by vrt-bench (file AIO) and
 * vrt-img bench (virtual disks): the latency histogram, the measured window with its
 * CPU use, and the results part of the text and JSON reports, so that both tools print
 * numbers that mean the same thing in the same shape.  Internal to tools/.
 */
#ifndef VRT_TOOLS_BENCH_REPORT_H
#define VRT_TOOLS_BENCH_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>

/*
 * Latency histogram.
 *
 * Log-linear, in the manner of HdrHistogram: values below 256 ns have a bucket each;
 * above, every power of two [2^k, 2^(k+1)) is cut into 128 equal buckets.  A bucket is
 * thus at most 1/128 of its lower bound wide, and a value read back as the bucket's
 * middle is within 0.4 % of the truth.  7424 buckets cover all of uint64_t (58 KiB:
 * keep histograms off the stack).
 */
#define HIST_SUB_BITS 7u
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_BUCKETS  ((64u - HIST_SUB_BITS + 1u) * HIST_SUB)

struct histogram {
    uint64_t count;
    uint64_t sum;
    uint64_t min;
    uint64_t max;
    uint64_t buckets[HIST_BUCKETS];
};

void hist_init(struct histogram *h);
void hist_record(struct histogram *h, uint64_t value);
void hist_merge(struct histogram *into, const struct histogram *from);
/** The smallest recorded value that at least @a pct percent of the values do not
 *  exceed (0 for an empty histogram). */
uint64_t hist_percentile(const struct histogram *h, double pct);

enum dir { DIR_READ, DIR_WRITE, DIR_COUNT };
extern const char *const dir_names[DIR_COUNT];

struct dir_stats {
    uint64_t ios;
    uint64_t bytes;
    struct histogram lat;
};

/* What a run counts inside its measured window. */
struct bench_measure {
    struct dir_stats stats[DIR_COUNT];
    uint64_t window_start_ns, window_end_ns;
    struct rusage usage_start, usage_end;
    uint64_t submit_calls, wait_calls; /* inside the window */
};

/** Empties the counters and histograms. */
void bench_measure_init(struct bench_measure *m);
/** Opens the window at @a now (rt_time_nano_ts) and samples the process's CPU time. */
void bench_window_open(struct bench_measure *m, uint64_t now);
/** Closes the window at @a now and samples the CPU time again. */
void bench_window_close(struct bench_measure *m, uint64_t now);

struct lat_summary {
    uint64_t min, p50, p90, p99, p999, p9999, max;
    double mean;
};

struct dir_result {
    uint64_t ios, bytes;
    double iops, mib_s;
    struct lat_summary lat;
};

struct results {
    double elapsed_s;
    struct dir_result dir[DIR_COUNT];
    struct dir_result total;
    double cpu_user_s, cpu_sys_s, cpu_util_pct, cpu_us_per_io;
    uint64_t submit_calls, wait_calls;
    double reqs_per_submit, reqs_per_wait;
};

/** Turns the counts of a closed window into rates, percentiles and CPU per I/O. */
void bench_compute_results(const struct bench_measure *m, struct results *r);

/**
 * Prints the text report's results: throughput and latency tables (a row for each
 * direction @a in_workload marks, plus "total" when @a mixed), CPU and call counts.
 * @a stopped_early notes a run a signal ended.
 */
void bench_print_human_results(const struct results *r, const bool in_workload[DIR_COUNT],
                               bool mixed, bool stopped_early);

/**
 * Prints the JSON report's "results" member, indented for a top-level object, from
 * `  "results": {` to its closing `  }` and newline; the caller closes the object.
 * @a stopped_by is the signal that ended the run, or 0.
 */
void bench_print_json_results(const struct results *r, int stopped_by);

#endif /* VRT_TOOLS_BENCH_REPORT_H */
