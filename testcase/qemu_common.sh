# What the qemu oracle scripts (vd_qemu.sh, vd_qemu_qcow2.sh) share; sourced, not run.
# Sets img and vd_io, exits 77 when qemu-utils is missing, and provides gen_script,
# ranges and converts_identically on top of checks.sh (work, check, expect_exit,
# summary).

top_builddir=${top_builddir:-.}
img="$top_builddir/vrt-img"
vd_io="$top_builddir/testcase/vd_io"

for tool in qemu-img qemu-io; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIP: $tool is not installed (Debian package qemu-utils)"
        exit 77
    fi
done

. "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

# A reproducible random write script in the qemu-io language vd_io understands:
# write -P / write -z at any offset and length, with a flush now and then.
gen_script() {
    local size=$1 count=$2 seed=$3
    RANDOM=$seed
    for ((i = 0; i < count; i++)); do
        local off=$(((RANDOM * 32768 + RANDOM) % size))
        local len=$((1 + (RANDOM * 4) % 200000))
        [ $((off + len)) -gt "$size" ] && len=$((size - off))
        if [ $((RANDOM % 5)) -eq 0 ]; then
            echo "write -z $off $len"
        else
            printf 'write -P 0x%02x %d %d\n' $((RANDOM % 255 + 1)) "$off" "$len"
        fi
        [ $((RANDOM % 10)) -eq 0 ] && echo flush
    done
}

# The ranges of a map in JSON (ours or qemu's) that have an attribute, merged:
# "start end" lines.  data: data true; zero: zero true and data false (qemu also
# reports data over host holes as zero); compressed: ours says so, qemu 7.2 only
# leaves the offset out of data (newer qemu says "compressed": true as well).
ranges() {
    local kind=$1
    awk -v kind="$kind" '
        match($0, /"start": *[0-9]+/) {
            start = substr($0, RSTART, RLENGTH); sub(/.*: */, "", start)
            match($0, /"length": *[0-9]+/)
            len = substr($0, RSTART, RLENGTH); sub(/.*: */, "", len)
            data = $0 ~ /"data": *true/
            zero = $0 ~ /"zero": *true/
            if (kind == "data") hit = data
            else if (kind == "zero") hit = zero && !data
            else hit = $0 ~ /"compressed": *true/ || (data && $0 !~ /"offset"/)
            if (!hit) next
            if (have && start == end) { end = start + len; next }
            if (have) print s, end
            s = start; end = start + len; have = 1
        }
        END { if (have) print s, end }'
}

# converts_identically FMT FILE: vrt-img and qemu-img convert FILE to the same raw bytes.
converts_identically() {
    local fmt=$1 file=$2
    "$img" convert -f "$fmt" -O raw "$file" "$work/ours.raw" &&
        qemu-img convert -f "$fmt" -O raw "$file" "$work/theirs.raw" &&
        cmp "$work/ours.raw" "$work/theirs.raw"
    local rc=$?
    rm -f "$work/ours.raw" "$work/theirs.raw"
    return $rc
}
