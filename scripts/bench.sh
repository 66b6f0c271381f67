#!/usr/bin/env bash
# make bench: vrt-bench against its peers (fio's engines), side by side in one run.
#
# For every workload and every backend this build has, vrt-bench and each peer run on
# the same preconditioned (fully written, not sparse) file with the same block size,
# depth and O_DIRECT setting, interleaved: vrt, peer 1, peer 2, vrt, peer 1, ... for
# --reps rounds.  The report gives medians and the ratio vrt/peer of the medians, with
# the spread of the per-round ratios, and CPU time per I/O for the whole system (all
# processes and kernel threads: /proc/stat, not just the benchmark process).
#
#   scripts/bench.sh [--reps N] [--runtime S] [--ramp S] [--size SIZE] [--dir DIR] [--out DIR]
#                    [--backends "linux-aio threads"] [--workloads "qd1 qd32 ..."] [--quick]
#
# Writes OUT/results.md (table, machine, versions), OUT/raw.tsv (every run) and
# OUT/ratios.png (when gnuplot is installed).  Default OUT: doc/bench.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
reps=5
runtime=1.5
ramp=0.5
size=1g
dir=${TMPDIR:-/var/tmp}
out="$here/doc/bench"
bench=${VRT_BENCH:-}
backends=""
workloads="qd1 qd32 qd128 write32 buf1 buf32 seq8"

while [ $# -gt 0 ]; do
    case "$1" in
    --reps) reps=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --backends) backends=$2; shift 2 ;;
    --workloads) workloads=$2; shift 2 ;;
    --quick) reps=3; runtime=1; shift ;;
    --ramp) ramp=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

need=()
for tool in fio jq gnuplot; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    pkgs=()
    for tool in "${need[@]}"; do
        case "$tool" in gnuplot) pkgs+=(gnuplot-nox) ;; *) pkgs+=("$tool") ;; esac
    done
    echo "==> installing ${pkgs[*]}"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if [ -z "$bench" ]; then
    for candidate in "$PWD/vrt-bench" "$here/build/vrt-bench"; do
        [ -x "$candidate" ] && bench=$candidate && break
    done
fi
[ -n "$bench" ] || { echo "bench.sh: no vrt-bench found: build first (./dev.sh run)" >&2; exit 1; }

# Backends this build and host have.
if [ -z "$backends" ]; then
    for b in linux-aio io_uring threads; do
        if "$bench" --backend "$b" --size 1m --runtime 0.1 --ramp 0 --quiet --json \
            --filename "$dir/vrt-bench-probe.$$" >/dev/null 2>&1; then
            backends="$backends $b"
        fi
        rm -f "$dir/vrt-bench-probe.$$"
    done
fi

mkdir -p "$out"
file="$dir/vrt-bench-data.$$"
raw="$out/raw.tsv"
trap 'rm -f "$file"' EXIT

echo "==> preconditioning $size at $file"
fio --name=fill --filename="$file" --size="$size" --rw=write --bs=1m --direct=1 \
    --ioengine=psync --refill_buffers --output=/dev/null

# workload name -> rw bs depth direct
workload() {
    case "$1" in
    qd1) echo "randread 4k 1 1" ;;
    qd32) echo "randread 4k 32 1" ;;
    qd128) echo "randread 4k 128 1" ;;
    write32) echo "randwrite 4k 32 1" ;;
    buf1) echo "randread 4k 1 0" ;;
    buf32) echo "randread 4k 32 0" ;;
    seq8) echo "read 1m 8 1" ;;
    *) echo "bench.sh: unknown workload $1" >&2; exit 2 ;;
    esac
}

# backend depth -> its peers.  "vrt-nodoze" only where requests queue behind the pool
# (depth above its size): elsewhere the waiter never dozes and the two are one.
peers() {
    case "$1" in
    linux-aio) echo "libaio libaio-tuned" ;;
    io_uring) echo "io_uring io_uring-tuned" ;;
    threads)
        echo "psync posixaio vrt-locked"
        if [ "$2" -gt "$(pool_size "$2")" ]; then echo "vrt-nodoze"; fi
        ;;
    esac
}

ms() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000 }'; }

pool_size() { local d=$1; [ "$d" -lt 16 ] && echo "$d" || echo 16; }

# Non-idle jiffies of the whole machine.
busy_jiffies() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# run_peer PEER RW BS DEPTH DIRECT -> "iops p50_us ios"
# "vrt-locked" is vrt-bench itself with the thread pool's lock-free ring switched off
# (RT_AIO_POOL_QUEUE=locked): the same-run check that the ring beats a mutex queue.
# "vrt-nodoze" is vrt-bench with the waiter's doze switched off (RT_AIO_POOL_DOZE=off):
# every completion wakes a sleeping waiter, as before the doze.
run_peer() {
    local peer=$1 rw=$2 bs=$3 depth=$4 direct=$5 batch
    case "$peer" in
    vrt-locked) RT_AIO_POOL_QUEUE=locked run_vrt threads "$rw" "$bs" "$depth" "$direct"; return ;;
    vrt-nodoze) RT_AIO_POOL_DOZE=off run_vrt threads "$rw" "$bs" "$depth" "$direct"; return ;;
    esac
    batch=$((depth < 32 ? depth : 32))
    local args=(--name=peer --filename="$file" --size="$size" --rw="$rw" --bs="$bs"
        --direct="$direct" --runtime="$(ms "$runtime")ms" --ramp_time="$(ms "$ramp")ms" --time_based
        --norandommap --randrepeat=0 --lat_percentiles=1 --output-format=json)
    case "$peer" in
    libaio) args+=(--ioengine=libaio --iodepth="$depth") ;;
    libaio-tuned) args+=(--ioengine=libaio --iodepth="$depth" --userspace_reap
        --iodepth_batch_submit="$batch" --iodepth_batch_complete_min=0
        --iodepth_batch_complete_max="$depth") ;;
    io_uring) args+=(--ioengine=io_uring --iodepth="$depth") ;;
    io_uring-tuned) args+=(--ioengine=io_uring --iodepth="$depth" --fixedbufs --registerfiles
        --nonvectored=1 --iodepth_batch_submit="$batch" --iodepth_batch_complete_min=1
        --iodepth_batch_complete_max="$depth") ;;
    psync) args+=(--ioengine=psync --numjobs="$(pool_size "$depth")" --thread --group_reporting) ;;
    posixaio) args+=(--ioengine=posixaio --iodepth="$depth") ;;
    esac
    fio "${args[@]}" | jq -r '.jobs[0] as $j
        | (if $j.read.io_bytes > 0 then $j.read else $j.write end) as $d
        | "\($j.read.iops + $j.write.iops) \(($d.lat_ns.percentile["50.000000"] // 0) / 1000) \($j.read.total_ios + $j.write.total_ios)"'
}

# run_vrt BACKEND RW BS DEPTH DIRECT -> "iops p50_us ios"
# The batch is the tuned peers' iodepth_batch_submit, and the buffers are registered as
# theirs are (--fixedbufs), so "same depth and batch" holds against them.
run_vrt() {
    local backend=$1 rw=$2 bs=$3 depth=$4 direct=$5
    RT_AIO_THREADS=$(pool_size "$depth") "$bench" --backend "$backend" --rw "$rw" --bs "$bs" \
        --iodepth "$depth" --batch "$((depth < 32 ? depth : 32))" --fixedbufs 1 \
        --direct "$direct" --filename "$file" --size "$size" \
        --runtime "$runtime" --ramp "$ramp" --json --quiet |
        jq -r '.results | "\(.iops) \(.lat_ns.p50 / 1000) \(.ios)"'
}

# measure CMD... -> appends "cpu_us_per_io" to the command's "iops p50 ios" line
measure() {
    local before after line hz
    hz=$(getconf CLK_TCK)
    before=$(busy_jiffies)
    line=$("$@")
    after=$(busy_jiffies)
    # CPU of the whole run (ramp included) over the I/Os of the whole run, estimated as
    # iops x (ramp + runtime): both tools ramp alike, so the comparison is fair.
    awk -v l="$line" -v b="$before" -v a="$after" -v hz="$hz" -v t="$ramp" -v r="$runtime" 'BEGIN {
        split(l, f, " "); ios = f[1] * (t + r);
        printf "%s %s %.3f\n", f[1], f[2], (ios > 0 ? (a - b) / hz * 1e6 / ios : 0) }'
}

printf 'workload\tbackend\ttool\trep\tiops\tp50_us\tcpu_us_per_io\n' >"$raw"
start=$(date +%s)
for w in $workloads; do
    read -r rw bs depth direct <<<"$(workload "$w")"
    for b in $backends; do
        for rep in $(seq 1 "$reps"); do
            line=$(measure run_vrt "$b" "$rw" "$bs" "$depth" "$direct")
            printf '%s\t%s\tvrt\t%s\t%s\n' "$w" "$b" "$rep" "${line// /$'\t'}" >>"$raw"
            for p in $(peers "$b" "$depth"); do
                line=$(measure run_peer "$p" "$rw" "$bs" "$depth" "$direct")
                printf '%s\t%s\t%s\t%s\t%s\n' "$w" "$b" "$p" "$rep" "${line// /$'\t'}" >>"$raw"
            done
            echo "  $w $b round $rep/$reps done ($(($(date +%s) - start)) s)"
        done
    done
done

"$here/scripts/bench-report.sh" "$raw" "$out" "$reps" "$runtime" "$size" "$bench"
