#!/usr/bin/env bash
# The image engine against its peers, in one run: medians of interleaved rounds.
#
#   1. convert: vrt-img convert against qemu-img convert, qcow2 -> qcow2 and
#      qcow2 -> raw, of an image with scattered data; both flush at the end (qemu-img
#      -t writeback; its default, unsafe, never flushes).  Throughput of guest data and
#      system calls per MiB (strace -f -c, a separate untimed run).
#   2. random 4 KiB reads at depth 32, O_DIRECT, on a fully allocated qcow2 image with a
#      cold (one-table) and a warm L2 cache, against the same reads of a raw image of the
#      same data.
#   3. random 4 KiB writes at depth 32, O_DIRECT, that allocate on an empty qcow2 image,
#      against the same writes to a preallocated raw file.
#
#   scripts/bench-engine.sh [BUILD_DIR]      (default: build)
#
# Environment: ROUNDS (5), SIZE (image, 8G), CONVERT_SIZE (virtual size of the
# convert source, 2G), CONVERT_DATA_MIB (its data, 512), COUNT (requests per bench
# run, 100000), OUT (doc/bench/engine.md; "-" for stdout only), TMPDIR.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-common.sh
. "$here/scripts/bench-common.sh"
build=${1:-$here/build}
img="$build/vrt-img"
rounds=${ROUNDS:-5}
size=${SIZE:-8G}
convert_size=${CONVERT_SIZE:-2G}
convert_data_mib=${CONVERT_DATA_MIB:-512}
count=${COUNT:-100000}
out=${OUT:-$here/doc/bench/engine.md}

for tool in "$img" qemu-img qemu-io strace; do
    command -v "$tool" >/dev/null || {
        echo "bench-engine: $tool not found (build first; Debian: qemu-utils, strace)" >&2
        exit 1
    }
done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/vrt-bench-engine.XXXXXX")
trap 'rm -rf "$work"' EXIT
raw="$work/results.tsv"
: >"$raw"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }
med() { awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$raw" | median; }
spread() { # OURS THEIRS [invert]: lowest and highest per-round ratio
    paste <(awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$raw") \
          <(awk -F'\t' -v k="$2" '$1 == k { print $2 }' "$raw") |
        awk -v inv="${3:-0}" '{ r = inv ? $2 / $1 : $1 / $2; if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r }
             END { printf "%.2f-%.2f", lo, hi }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# --- 1. convert -------------------------------------------------------------------
src_raw="$work/src.raw"
src="$work/src.qcow2"
echo "==> preparing a $convert_size qcow2 image with ${convert_data_mib} MiB of scattered data" >&2
truncate -s "$convert_size" "$src_raw"
virt_mib=$(($(stat -c %s "$src_raw") / 1048576))
written=0
seed=1
while [ "$written" -lt "$convert_data_mib" ]; do
    # Runs of 64 KiB to 4 MiB at pseudo-random offsets (a fixed sequence).
    seed=$(((seed * 1103515245 + 12345) % 2147483648))
    len_kib=$((64 << (seed % 7)))
    seed=$(((seed * 1103515245 + 12345) % 2147483648))
    at_kib=$(((seed % ((virt_mib - 4) * 16)) * 64))
    dd if=/dev/urandom of="$src_raw" bs=64k seek=$((at_kib / 64)) count=$((len_kib / 64)) \
        conv=notrunc status=none
    written=$((written + len_kib / 1024))
done
qemu-img convert -q -f raw -O qcow2 "$src_raw" "$src"
rm -f "$src_raw"
data_mib=$(qemu-img map -f qcow2 --output=json "$src" |
    awk -F'[:,]' '/"data": true/ { for (i = 1; i < NF; i++) if ($i ~ /"length"/) s += $(i + 1) } END { printf "%.0f", s / 1048576 }')

convert_once() { # TOOL OUTFMT: prints seconds
    local dst="$work/dst.$2" t0 t1
    rm -f "$dst"
    sync
    t0=$(now)
    if [ "$1" = vrt ]; then
        "$img" convert -q -f qcow2 -O "$2" "$src" "$dst"
    else
        qemu-img convert -q -t writeback -f qcow2 -O "$2" "$src" "$dst"
    fi
    t1=$(now)
    rm -f "$dst"
    elapsed "$t0" "$t1"
}
syscalls_per_mib() { # TOOL OUTFMT
    local dst="$work/dst.$2" trace="$work/strace.txt"
    rm -f "$dst"
    if [ "$1" = vrt ]; then
        strace -f -c -o "$trace" "$img" convert -q -f qcow2 -O "$2" "$src" "$dst"
    else
        strace -f -c -o "$trace" qemu-img convert -q -t writeback -f qcow2 -O "$2" "$src" "$dst"
    fi
    rm -f "$dst"
    awk -v mib="$data_mib" '$NF == "total" { printf "%.1f", $(NF - 2) / mib }' "$trace"
}
for ((r = 1; r <= rounds; r++)); do
    echo "==> convert round $r/$rounds" >&2
    for fmt in qcow2 raw; do
        printf 'vrt convert %s\t%s\n' "$fmt" "$(convert_once vrt "$fmt")" >>"$raw"
        printf 'qemu convert %s\t%s\n' "$fmt" "$(convert_once qemu "$fmt")" >>"$raw"
    done
done
declare -A calls
for fmt in qcow2 raw; do
    calls[vrt-$fmt]=$(syscalls_per_mib vrt "$fmt")
    calls[qemu-$fmt]=$(syscalls_per_mib qemu "$fmt")
done
rm -f "$src"

# --- 2. and 3. random reads and allocating writes ---------------------------------
bench_iops() { # FORMAT FILE [extra vrt-img bench args...]
    local fmt=$1 file=$2
    shift 2
    "$img" bench -q -f "$fmt" -t none -d 32 -s 4k --pattern=rand -c "$count" --output=json "$@" \
        "$file" | sed -n 's/.*"ios": [0-9]*, "bytes": [0-9]*, "errors": [0-9]*, "iops": \([0-9.]*\).*/\1/p' |
        head -n 1
}
full_q="$work/full.qcow2"
full_r="$work/full.raw"
echo "==> preparing fully allocated $size qcow2 and raw images of the same data" >&2
qemu-img create -q -f qcow2 "$full_q" "$size"
size_bytes=$(qemu-img info --output=json "$full_q" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
writes=()
for ((at = 0; at < size_bytes; at += 1073741824)); do # qemu-io takes at most 2 GiB a write
    len=$((size_bytes - at < 1073741824 ? size_bytes - at : 1073741824))
    writes+=(-c "write -P 0x5a $at $len")
done
qemu-io -f qcow2 "${writes[@]}" "$full_q" >/dev/null
qemu-img convert -q -f qcow2 -O raw -S 0 "$full_q" "$full_r"
empty_q="$work/empty.qcow2"
pre_r="$work/prealloc.raw"
for ((r = 1; r <= rounds; r++)); do
    echo "==> bench round $r/$rounds" >&2
    printf 'qcow2 read cold\t%s\n' "$(bench_iops qcow2 "$full_q" -o l2-cache-size=64k)" >>"$raw"
    printf 'qcow2 read warm\t%s\n' "$(bench_iops qcow2 "$full_q")" >>"$raw"
    printf 'raw read\t%s\n' "$(bench_iops raw "$full_r")" >>"$raw"
    rm -f "$empty_q" "$pre_r"
    qemu-img create -q -f qcow2 "$empty_q" "$size"
    printf 'qcow2 alloc write\t%s\n' "$(bench_iops qcow2 "$empty_q" -w)" >>"$raw"
    qemu-img create -q -f raw -o preallocation=falloc "$pre_r" "$size"
    printf 'raw prealloc write\t%s\n' "$(bench_iops raw "$pre_r" -w)" >>"$raw"
done

# --- report ------------------------------------------------------------------------
{
    echo "# The image engine against its peers"
    echo
    echo "Command: \`scripts/bench-engine.sh\` (ROUNDS=$rounds, SIZE=$size, CONVERT_SIZE=$convert_size, COUNT=$count), $(date -u +%Y-%m-%d)."
    echo "Machine: $(nproc) vCPU, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr), $(qemu-img --version | head -n 1)."
    echo "Medians of $rounds interleaved rounds; spread = lowest and highest per-round ratio."
    echo
    echo "## convert ($convert_size virtual, $data_mib MiB of data, page cache, both flush at the end)"
    echo
    echo "| to | vrt-img s | qemu-img -t writeback s | throughput ratio | spread | syscalls/MiB vrt | qemu |"
    echo "|---|---:|---:|---:|---|---:|---:|"
    for fmt in qcow2 raw; do
        o=$(med "vrt convert $fmt") t=$(med "qemu convert $fmt")
        printf '| %s | %.2f | %.2f | %sx | %s | %s | %s |\n' "$fmt" "$o" "$t" "$(ratio "$t" "$o")" \
            "$(spread "vrt convert $fmt" "qemu convert $fmt" 1)" "${calls[vrt-$fmt]}" "${calls[qemu-$fmt]}"
    done
    echo
    echo "## 4 KiB random I/O at depth 32, O_DIRECT, $size, $count requests (vrt-img bench)"
    echo
    echo "| workload | IOPS | against | IOPS | ratio | spread |"
    echo "|---|---:|---|---:|---:|---|"
    for pair in "qcow2 read cold:raw read" "qcow2 read warm:raw read" "qcow2 alloc write:raw prealloc write"; do
        o=$(med "${pair%%:*}") t=$(med "${pair##*:}")
        printf '| %s | %.0f | %s | %.0f | %sx | %s |\n' "${pair%%:*}" "$o" "${pair##*:}" "$t" \
            "$(ratio "$o" "$t")" "$(spread "${pair%%:*}" "${pair##*:}")"
    done
    echo
    echo "cold: \`-o l2-cache-size=64k\` (one L2 table; most reads miss); warm: the default 32 MiB."
    echo
    echo "Raw measurements (what, seconds or IOPS):"
    echo
    echo '```'
    cat "$raw"
    echo '```'
} >"$work/report.md"

publish "$work/report.md" "$out"
