#!/usr/bin/env bash
# The knobs behind doc/design.md's notes on waiting and batching, measured side by side
# in one run on one preconditioned file (O_DIRECT 4 KiB random reads), rounds
# interleaved, medians reported.
#
# Depth 32, io_uring:
#   vrt-bench --batch B          for B in 32, 8, 4 (requests per rt_aio_ctx_submit)
#   vrt-bench --single-thread 0  batch 32, a context any thread may drive (no
#                                DEFER_TASKRUN/COOP_TASKRUN: the kernel interrupts
#                                the thread for each completion)
#   RT_AIO_SUBMIT=whole          batch 32, every submit in one io_uring_enter (no early
#                                start of an idle device)
#   fio io_uring tuned, iodepth_batch_submit=B, for the same B
#   fio io_uring tuned without --registerfiles (what registered files buy fio)
# Depth 32, linux-aio, batch 32: vrt-bench with and without the early start, tuned fio
# libaio.
# Depth 128, io_uring, batch 32: vrt-bench with and without the early start, tuned fio.
# Depth 1, every backend against fio's same engine with default settings:
#   vrt-bench --wait-timeout none  (the default: waits as fio does)
#   vrt-bench --wait-timeout 100   (each wait bounded, so each sleep arms a timer)
#
#   scripts/bench-knobs.sh [--reps N] [--runtime S] [--size SIZE] [--dir DIR]
#
# Run from a build directory (it uses ./vrt-bench, or VRT_BENCH).  Needs fio and jq
# (scripts/bench.sh installs them).  Prints four markdown tables.
set -euo pipefail

reps=5
runtime=2
size=1g
dir=${TMPDIR:-/var/tmp}
bench=${VRT_BENCH:-$PWD/vrt-bench}

while [ $# -gt 0 ]; do
    case "$1" in
    --reps) reps=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "bench-knobs.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
[ -x "$bench" ] || { echo "bench-knobs.sh: no vrt-bench at $bench: run from a build directory" >&2; exit 1; }
for tool in fio jq; do
    command -v "$tool" >/dev/null || { echo "bench-knobs.sh: needs $tool (scripts/bench.sh installs it)" >&2; exit 1; }
done

file="$dir/vrt-knobs-data.$$"
results=$(mktemp)
trap 'rm -f "$file" "$results"' EXIT
fio --name=fill --filename="$file" --size="$size" --rw=write --bs=1m --direct=1 \
    --ioengine=psync --refill_buffers --output=/dev/null

# vrt BACKEND DEPTH ARGS... -> "iops p50_us"
vrt() {
    "$bench" --backend "$1" --filename "$file" --size "$size" --rw randread --bs 4k \
        --iodepth "$2" "${@:3}" --runtime "$runtime" --ramp 0.5 --json --quiet |
        jq -r '.results | "\(.iops) \(.lat_ns.p50 / 1000)"'
}
# fio_run ENGINE DEPTH ARGS... -> "iops p50_us" (p50 of fio's submit-to-completion lat)
fio_run() {
    fio --name=peer --filename="$file" --size="$size" --rw=randread --bs=4k --direct=1 \
        --runtime="${runtime}s" --ramp_time=500ms --time_based --norandommap --randrepeat=0 \
        --ioengine="$1" --iodepth="$2" --lat_percentiles=1 "${@:3}" --output-format=json |
        jq -r '.jobs[0].read | "\(.iops) \(.lat_ns.percentile["50.000000"] / 1000)"'
}
# fio_tuned DEPTH BATCH ARGS...
fio_tuned() {
    fio_run io_uring "$1" --fixedbufs --nonvectored=1 --iodepth_batch_submit="$2" \
        --iodepth_batch_complete_min=1 --iodepth_batch_complete_max="$1" "${@:3}"
}
# record TABLE NAME "iops p50"
record() {
    printf '%s\t%s\t%s\n' "$1" "$2" "${3// /$'\t'}" >>"$results"
}

for rep in $(seq 1 "$reps"); do
    for b in 32 8 4; do
        record qd32 "vrt-bench --batch $b" "$(vrt io_uring 32 --batch "$b")"
        record qd32 "fio tuned, iodepth_batch_submit=$b" "$(fio_tuned 32 "$b" --registerfiles)"
    done
    record qd32 "fio tuned without --registerfiles (batch 32)" "$(fio_tuned 32 32)"
    record qd32 "vrt-bench --batch 32 --single-thread 0" "$(vrt io_uring 32 --batch 32 --single-thread 0)"
    record qd32 "vrt-bench --batch 32, RT_AIO_SUBMIT=whole" \
        "$(RT_AIO_SUBMIT=whole vrt io_uring 32 --batch 32)"
    record laio32 "vrt-bench --batch 32" "$(vrt linux-aio 32 --batch 32)"
    record laio32 "vrt-bench --batch 32, RT_AIO_SUBMIT=whole" \
        "$(RT_AIO_SUBMIT=whole vrt linux-aio 32 --batch 32)"
    record laio32 "fio libaio tuned, iodepth_batch_submit=32" "$(fio_run libaio 32 \
        --userspace_reap --iodepth_batch_submit=32 --iodepth_batch_complete_min=0 \
        --iodepth_batch_complete_max=32)"
    record qd128 "vrt-bench --batch 32" "$(vrt io_uring 128 --batch 32)"
    record qd128 "vrt-bench --batch 32, RT_AIO_SUBMIT=whole" \
        "$(RT_AIO_SUBMIT=whole vrt io_uring 128 --batch 32)"
    record qd128 "fio tuned, iodepth_batch_submit=32" "$(fio_tuned 128 32 --registerfiles)"
    for pair in io_uring:io_uring linux-aio:libaio threads:psync; do
        backend=${pair%%:*} engine=${pair#*:}
        record qd1 "$backend: vrt-bench --wait-timeout none" "$(vrt "$backend" 1)"
        record qd1 "$backend: vrt-bench --wait-timeout 100" "$(vrt "$backend" 1 --wait-timeout 100)"
        record qd1 "$backend: fio $engine" "$(fio_run "$engine" 1)"
    done
    echo "round $rep/$reps done" >&2
done

# summary TABLE: per run name, in first-seen order, "name|median iops|lowest|highest|median p50"
summary() {
    awk -F'\t' -v t="$1" '
        # Splits list into v, sorted ascending (insertion sort: a handful of values);
        # returns how many.
        function sorted(list, v,   n, i, j, x) {
            n = split(list, v, " ")
            for (i = 2; i <= n; i++) {
                x = v[i] + 0
                for (j = i - 1; j >= 1 && v[j] + 0 > x; j--) v[j + 1] = v[j]
                v[j + 1] = x
            }
            return n
        }
        function median(list,   v, n) {
            n = sorted(list, v)
            return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        function lowest(list,   v) { sorted(list, v); return v[1] }
        function highest(list,   v, n) { n = sorted(list, v); return v[n] }
        $1 == t {
            if (!($2 in iops)) order[++count] = $2
            iops[$2] = iops[$2] " " $3; p50[$2] = p50[$2] " " $4
        }
        END {
            for (i = 1; i <= count; i++) {
                n = order[i]
                printf "%s|%.0f|%.0f|%.0f|%.1f\n", n, median(iops[n]), lowest(iops[n]),
                    highest(iops[n]), median(p50[n])
            }
        }' "$results"
}

# iops_table TABLE "DEPTH, BACKEND": the table's runs with their IOPS
iops_table() {
    echo "| run (4k randread O_DIRECT, depth $2) | median IOPS | lowest | highest |"
    echo "|---|---:|---:|---:|"
    summary "$1" | awk -F'|' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }'
    echo
}

iops_table qd32 "32, io_uring"
iops_table laio32 "32, linux-aio"
iops_table qd128 "128, io_uring"
echo "| run (4k randread O_DIRECT, depth 1) | median IOPS | lowest | highest | median p50 µs |"
echo "|---|---:|---:|---:|---:|"
summary qd1 | awk -F'|' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
