#!/usr/bin/env bash
# vrt-img bench against qemu-img bench on the same fully allocated image, O_DIRECT,
# 4 KiB reads at depth 32, interleaved rounds, medians and ratios.
#
#   scripts/bench-img.sh [BUILD_DIR]      (default: build)
#
# qemu-img bench has no random mode, so the like-for-like rows are sequential; vrt-img's
# random-read row is shown beside them.  Each vrt-img backend is compared with the
# matching qemu aio mode (io_uring with io_uring, linux-aio with native).
# Environment: ROUNDS (5), COUNT (requests per run, 100000), SIZE (image, 1G),
# FORMATS ("qcow2 raw"), OUT (doc/bench/img.md; "-" for stdout only).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-common.sh
. "$here/scripts/bench-common.sh"
build=${1:-$here/build}
img="$build/vrt-img"
rounds=${ROUNDS:-5}
count=${COUNT:-100000}
size=${SIZE:-1G}
formats=${FORMATS:-qcow2 raw}
out=${OUT:-$here/doc/bench/img.md}

for tool in "$img" qemu-img qemu-io; do
    command -v "$tool" >/dev/null || { echo "bench-img: $tool not found (build first; Debian: qemu-utils)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/vrt-bench-img.XXXXXX")
trap 'rm -rf "$work"' EXIT
raw="$work/results.tsv"
: >"$raw"

# One measurement: prints IOPS.
vrt_iops() { # BACKEND PATTERN FORMAT FILE
    RT_AIO_BACKEND=$1 "$img" bench -q -f "$3" -t none -d 32 -s 4k --pattern="$2" -c "$count" \
        --output=json "$4" | sed -n 's/.*"ios": [0-9]*, "bytes": [0-9]*, "errors": [0-9]*, "iops": \([0-9.]*\).*/\1/p' | head -n 1
}
qemu_iops() { # AIO FORMAT FILE
    local t
    t=$(qemu-img bench -f "$2" -t none -i "$1" -d 32 -s 4k -c "$count" "$3" |
        sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
    awk -v n="$count" -v t="$t" 'BEGIN { printf "%.1f\n", n / t }'
}


for fmt in $formats; do
    file="$work/image.$fmt"
    echo "==> preparing a fully allocated $size $fmt image" >&2
    qemu-img create -q -f "$fmt" "$file" "$size"
    qemu-io -f "$fmt" -c "write -P 0x5a 0 $size" "$file" >/dev/null
    for ((r = 1; r <= rounds; r++)); do
        echo "==> $fmt round $r/$rounds" >&2
        printf '%s\tvrt io_uring seq\t%s\n' "$fmt" "$(vrt_iops io_uring seq "$fmt" "$file")" >>"$raw"
        printf '%s\tqemu io_uring seq\t%s\n' "$fmt" "$(qemu_iops io_uring "$fmt" "$file")" >>"$raw"
        printf '%s\tvrt linux-aio seq\t%s\n' "$fmt" "$(vrt_iops linux-aio seq "$fmt" "$file")" >>"$raw"
        printf '%s\tqemu native seq\t%s\n' "$fmt" "$(qemu_iops native "$fmt" "$file")" >>"$raw"
        printf '%s\tvrt io_uring rand\t%s\n' "$fmt" "$(vrt_iops io_uring rand "$fmt" "$file")" >>"$raw"
    done
    rm -f "$file"
done

med() { awk -F'\t' -v f="$1" -v k="$2" '$1 == f && $2 == k { print $3 }' "$raw" | median; }
spread() { # FORMAT OURS THEIRS: min and max of the per-round ratios
    paste <(awk -F'\t' -v f="$1" -v k="$2" '$1 == f && $2 == k { print $3 }' "$raw") \
          <(awk -F'\t' -v f="$1" -v k="$3" '$1 == f && $2 == k { print $3 }' "$raw") |
        awk '{ r = $1 / $2; if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r }
             END { printf "%.2f-%.2f", lo, hi }'
}

{
    echo "# vrt-img bench against qemu-img bench"
    echo
    echo "Command: \`scripts/bench-img.sh\` (ROUNDS=$rounds, COUNT=$count, SIZE=$size), $(date -u +%Y-%m-%d)."
    echo "Machine: $(nproc) vCPU, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr), $(qemu-img --version | head -n 1)."
    echo "Fully allocated image, O_DIRECT (\`-t none\`), 4 KiB reads, depth 32, $count requests per run;"
    echo "medians of $rounds interleaved rounds; spread = lowest and highest per-round ratio."
    echo
    echo "| format | pattern | vrt-img | IOPS | qemu-img bench | IOPS | ratio | spread |"
    echo "|---|---|---|---:|---|---:|---:|---|"
    for fmt in $formats; do
        for pair in "io_uring:io_uring" "linux-aio:native"; do
            ours=${pair%%:*} theirs=${pair##*:}
            o=$(med "$fmt" "vrt $ours seq")
            t=$(med "$fmt" "qemu $theirs seq")
            printf '| %s | seq | %s | %.0f | -i %s | %.0f | %.2fx | %s |\n' "$fmt" "$ours" "$o" \
                "$theirs" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN { print a / b }')" \
                "$(spread "$fmt" "vrt $ours seq" "qemu $theirs seq")"
        done
        o=$(med "$fmt" "vrt io_uring rand")
        t=$(med "$fmt" "qemu io_uring seq")
        printf '| %s | rand (ours) vs seq (qemu) | io_uring | %.0f | -i io_uring | %.0f | %.2fx | %s |\n' \
            "$fmt" "$o" "$t" "$(awk -v a="$o" -v b="$t" 'BEGIN { print a / b }')" \
            "$(spread "$fmt" "vrt io_uring rand" "qemu io_uring seq")"
    done
    echo
    echo "Raw measurements (format, run, IOPS):"
    echo
    echo '```'
    cat "$raw"
    echo '```'
} >"$work/report.md"

publish "$work/report.md" "$out"
