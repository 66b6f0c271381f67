#!/usr/bin/env bash
# The io_uring knobs behind doc/design.md's notes, measured side by side in one run:
# O_DIRECT 4 KiB random reads at depth 32 on one preconditioned file, rounds
# interleaved, medians reported.
#
#   vrt-bench --batch B          for B in 32, 8, 4 (requests per rt_aio_ctx_submit)
#   fio io_uring tuned, iodepth_batch_submit=B, for the same B
#   fio io_uring tuned without --registerfiles (what registered files buy fio)
#
#   scripts/bench-knobs.sh [--reps N] [--runtime S] [--size SIZE] [--dir DIR]
#
# Run from a build directory (it uses ./vrt-bench, or VRT_BENCH).  Needs fio and jq
# (scripts/bench.sh installs them).  Prints a markdown table.
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
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
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

vrt() {
    "$bench" --backend io_uring --filename "$file" --size "$size" --rw randread --bs 4k \
        --iodepth 32 --batch "$1" --runtime "$runtime" --ramp 0.5 --json --quiet |
        jq -r '.results.iops'
}
fio_tuned() {
    fio --name=peer --filename="$file" --size="$size" --rw=randread --bs=4k --direct=1 \
        --runtime="${runtime}s" --ramp_time=500ms --time_based --norandommap --randrepeat=0 \
        --ioengine=io_uring --iodepth=32 --fixedbufs --nonvectored=1 \
        --iodepth_batch_submit="$1" --iodepth_batch_complete_min=1 \
        --iodepth_batch_complete_max=32 "${@:2}" --output-format=json | jq -r '.jobs[0].read.iops'
}

for rep in $(seq 1 "$reps"); do
    for b in 32 8 4; do
        printf 'vrt-bench --batch %s\t%s\n' "$b" "$(vrt "$b")" >>"$results"
        printf 'fio tuned, iodepth_batch_submit=%s\t%s\n' "$b" "$(fio_tuned "$b" --registerfiles)" >>"$results"
    done
    printf 'fio tuned without --registerfiles (batch 32)\t%s\n' "$(fio_tuned 32)" >>"$results"
    echo "round $rep/$reps done" >&2
done

echo "| run (4k randread O_DIRECT, depth 32) | median IOPS | lowest | highest |"
echo "|---|---:|---:|---:|"
cut -f1 "$results" | awk '!seen[$0]++' | while IFS= read -r name; do
    awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$results" | sort -n |
        awk -v n="$name" '{ v[NR] = $1 } END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "| %s | %.0f | %.0f | %.0f |\n", n, m, v[1], v[NR] }'
done
