#!/usr/bin/env bash
# qemu-img and qemu-io as the oracle for the QCOW2 driver and vrt-img, both ways:
#   - qemu writes an image (every cluster size, compat 0.10 and 1.1, with plain, zero,
#     compressed writes and discards), we read it: convert to raw byte-identical, same
#     data, zero and compressed ranges as qemu-img map, vrt-img check clean;
#   - two-deep backing chains written at every level: same contents, same map, same
#     depths;
#   - we create and convert images (plain and compressed), qemu checks, inspects and
#     compares them;
#   - the same random write script applied by qemu-io and by us (vd_io, synchronous and
#     queued) to an image holding data, compressed and zero clusters -- also with an
#     internal snapshot (whose contents must survive our writes; also uncached) and
#     over a backing file;
#   - internal snapshots made, listed, applied and deleted by vrt-img and by qemu-img,
#     each verified by the other (contents at each snapshot saved as raw);
#   - rebase (safe, standalone, unsafe) and commit (emptying and -d) by both tools on
#     copies of one chain, compared with each other;
#   - the same writes on images with every refcount width (1 to 64 bits);
#   - vrt-img check finds hand-made leaks (exit 3, repaired by -r leaks) and
#     corruptions (exit 2).
# Every fixture is generated here.  Exits 77 when qemu-utils is not installed.  Prints a
# CUnit-style summary row so the test totals count each check.
set -u

. "$(dirname "$0")/qemu_common.sh"

# Uncached runs need a file system that takes O_DIRECT (tmpfs does not).
direct_ok=no
dd if=/dev/zero of="$work/direct-probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null &&
    direct_ok=yes
rm -f "$work/direct-probe"
[ "$direct_ok" = yes ] || echo "note: $work refuses O_DIRECT: the uncached snapshot runs are left out"

# Whole clusters written compressed (the tail cluster with its real length).
gen_compressed() {
    local size=$1 cluster=$2 count=$3 seed=$4
    local clusters=$(((size + cluster - 1) / cluster))
    RANDOM=$seed
    for ((i = 0; i < count; i++)); do
        local off=$((((RANDOM * 32768 + RANDOM) % clusters) * cluster))
        local len=$cluster
        [ $((off + len)) -gt "$size" ] && len=$((size - off))
        printf 'write -c -P 0x%02x %d %d\n' $((RANDOM % 255 + 1)) "$off" "$len"
    done
}

# Discards of random ranges (qemu drops what is not whole clusters).
gen_discards() {
    local size=$1 count=$2 seed=$3
    RANDOM=$seed
    for ((i = 0; i < count; i++)); do
        local off=$(((RANDOM * 32768 + RANDOM) % size))
        local len=$((1 + (RANDOM * 16) % 1000000))
        [ $((off + len)) -gt "$size" ] && len=$((size - off))
        echo "discard $off $len"
    done
}

# The depth of every byte, as "start end depth" lines merged while the depth is equal.
depths() {
    awk '
        match($0, /"start": *[0-9]+/) {
            start = substr($0, RSTART, RLENGTH); sub(/.*: */, "", start)
            match($0, /"length": *[0-9]+/)
            len = substr($0, RSTART, RLENGTH); sub(/.*: */, "", len)
            match($0, /"depth": *[0-9]+/)
            depth = substr($0, RSTART, RLENGTH); sub(/.*: */, "", depth)
            if (have && start == end && depth == d) { end = start + len; next }
            if (have) print s, end, d
            s = start; end = start + len; d = depth; have = 1
        }
        END { if (have) print s, end, d }'
}

# same_map KIND FMT FILE: our ranges of KIND equal qemu's.
same_map() {
    local kind=$1 fmt=$2 file=$3
    diff <("$img" map -f "$fmt" --output=json "$file" | ranges "$kind") \
         <(qemu-img map -f "$fmt" --output=json "$file" | ranges "$kind")
}

same_depths() {
    local fmt=$1 file=$2
    diff <("$img" map -f "$fmt" --output=json "$file" | depths) \
         <(qemu-img map -f "$fmt" --output=json "$file" | depths)
}

# qemu-img check counts compressed clusters, and qemu-img map shows some.
qemu_sees_compressed() {
    qemu-img check -f qcow2 "$1" | tee /dev/stderr | grep -v ' 0.00% compressed' |
        grep -q '% compressed clusters' &&
        qemu-img map -f qcow2 --output=json "$1" | ranges compressed | grep -q .
}

cluster_label() {
    case $1 in
    512) echo 512 ;;
    4096) echo 4k ;;
    65536) echo 64k ;;
    2097152) echo 2M ;;
    esac
}

clusters="512 4096 65536 2097152"

# --- qemu creates, we read --------------------------------------------------------
size=$((8 * 1024 * 1024 + 512))
for cluster in $clusters; do
    cl=$(cluster_label "$cluster")
    {
        gen_script "$size" 30 11
        gen_compressed "$size" "$cluster" 6 12
        gen_script "$size" 10 13 # partly over compressed clusters
        gen_discards "$size" 4 14
        gen_compressed "$size" "$cluster" 2 15
    } >"$work/script-$cl"
    for compat in 0.10 1.1; do
        file="$work/qemu-$cl-$compat.qcow2"
        name="qemu-made qcow2 cluster $cl compat $compat"
        qemu-img create -q -f qcow2 -o "cluster_size=$cluster,compat=$compat" "$file" "$size"
        qemu-io -f qcow2 "$file" <"$work/script-$cl" >/dev/null
        check "$name: convert to raw is byte-identical" converts_identically qcow2 "$file"
        check "$name: map data ranges agree with qemu-img map" same_map data qcow2 "$file"
        check "$name: map zero ranges agree" same_map zero qcow2 "$file"
        check "$name: map compressed ranges agree" same_map compressed qcow2 "$file"
        check "$name: vrt-img check is clean" "$img" check -f qcow2 "$file"
    done
done

# --- two-deep backing chains -------------------------------------------------------
# base.raw <- mid.qcow2 <- top.qcow2, each level written by qemu-io; the second chain
# mixes compat levels and cluster sizes and has a qcow2 base with unallocated holes.
size=$((6 * 1024 * 1024))
for chain in 1 2; do
    dir="$work/chain$chain"
    mkdir "$dir"
    if [ "$chain" = 1 ]; then
        qemu-img create -q -f raw "$dir/base.raw" "$size"
        base=base.raw base_fmt=raw mid_cluster=65536 mid_opts=cluster_size=65536
        top_opts=cluster_size=65536
    else
        qemu-img create -q -f qcow2 -o cluster_size=4096 "$dir/base.qcow2" "$size"
        base=base.qcow2 base_fmt=qcow2 mid_cluster=2097152
        mid_opts=cluster_size=2097152,compat=0.10 top_opts=cluster_size=4096,compat=1.1
    fi
    gen_script "$size" 12 21 | qemu-io -f "$base_fmt" "$dir/$base" >/dev/null
    qemu-img create -q -f qcow2 -o "$mid_opts" -b "$base" -F "$base_fmt" "$dir/mid.qcow2"
    { gen_script "$size" 12 22; gen_compressed "$size" "$mid_cluster" 2 23; } |
        qemu-io -f qcow2 "$dir/mid.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -o "$top_opts" -b mid.qcow2 -F qcow2 "$dir/top.qcow2"
    { gen_script "$size" 12 24; gen_compressed "$size" 4096 3 25; gen_discards "$size" 2 26; } |
        qemu-io -f qcow2 "$dir/top.qcow2" >/dev/null
    name="chain $chain ($base_fmt <- qcow2 <- qcow2)"
    check "$name: convert of top is byte-identical" converts_identically qcow2 "$dir/top.qcow2"
    check "$name: map data ranges agree" same_map data qcow2 "$dir/top.qcow2"
    check "$name: map depths agree" same_depths qcow2 "$dir/top.qcow2"
    check "$name: compare with qemu's raw copy is identical" \
        bash -c "qemu-img convert -f qcow2 -O raw '$dir/top.qcow2' '$dir/flat.raw' &&
                 '$img' compare -f qcow2 -F raw '$dir/top.qcow2' '$dir/flat.raw'"
done
# Unallocated in the whole chain: qemu-img reports the depth of the chain's last image.
qemu-img create -q -f qcow2 "$work/chain2/empty-base.qcow2" 4M
qemu-img create -q -f qcow2 -b empty-base.qcow2 -F qcow2 "$work/chain2/empty-mid.qcow2"
qemu-img create -q -f qcow2 -b empty-mid.qcow2 -F qcow2 "$work/chain2/empty-top.qcow2"
qemu-io -f qcow2 -c 'write -P 3 1M 64k' "$work/chain2/empty-top.qcow2" >/dev/null
check "chain of empty images: map depths agree" same_depths qcow2 "$work/chain2/empty-top.qcow2"
check "probed image with a backing file: refused with a hint to give -f" \
    bash -c "'$img' map '$work/chain1/top.qcow2' 2>&1 >/dev/null | tee /dev/stderr |
                 grep -q 'give -f' && test \${PIPESTATUS[0]} -eq 1"

# A deep chain, as qemu-img follows it (41 images, each holding one piece), and the
# documented limit: 256 images open, 257 are refused as corrupt.
deep="$work/deep"
mkdir -p "$deep"
qemu-img create -q -f qcow2 "$deep/l0.qcow2" 4M
for i in $(seq 1 40); do
    qemu-img create -q -f qcow2 -b "l$((i - 1)).qcow2" -F qcow2 "$deep/l$i.qcow2"
    qemu-io -f qcow2 -c "write -P $i $((i * 65536 + 512)) 1000" "$deep/l$i.qcow2" >/dev/null
done
check "a 41-image chain: convert byte-identical to qemu-img's" converts_identically qcow2 "$deep/l40.qcow2"
# (qemu-img map's table refuses compressed clusters, which the chains above have.)
check "a 41-image chain: map's table names the file of each range, as qemu-img map does" \
    bash -c "diff <('$img' map -f qcow2 '$deep/l40.qcow2') <(qemu-img map '$deep/l40.qcow2')"
for i in $(seq 41 256); do
    "$img" create -q -f qcow2 -b "l$((i - 1)).qcow2" -F qcow2 "$deep/l$i.qcow2" 4M
done
check "a 256-image chain opens" \
    bash -c "'$img' convert -f qcow2 -O raw '$deep/l255.qcow2' '$deep/flat255.raw' &&
             qemu-img compare -f qcow2 -F raw '$deep/l40.qcow2' '$deep/flat255.raw'"
check "a 257-image chain is refused as too deep" \
    bash -c "'$img' convert -f qcow2 -O raw '$deep/l256.qcow2' '$deep/flat256.raw' 2>&1 |
             grep -q 'deeper than 256' && test ! -e '$deep/flat256.raw'"
rm -rf "$deep"

# info and check describe an overlay without opening its backing file, as qemu-img
# info does: with or without -f, and with the backing file gone.
backing_keys() {
    grep -E '"(backing-filename|full-backing-filename|backing-filename-format)"' | sort
}
export -f backing_keys
img_abs="$(cd "$(dirname "$img")" && pwd)/$(basename "$img")" # the checks run in $work
for fmt_opt in "" "-f qcow2"; do
    check "info ${fmt_opt:-(probed)} of an overlay: the backing keys qemu-img info gives" \
        bash -c "diff <(cd '$work' && '$img_abs' info $fmt_opt --output=json chain1/top.qcow2 | backing_keys) \
                      <(cd '$work' && qemu-img info --output=json chain1/top.qcow2 | backing_keys)"
done
check "info (human) of an overlay: the backing file lines qemu-img info prints" \
    bash -c "diff <(cd '$work' && '$img_abs' info chain1/top.qcow2 | grep '^backing file') \
                  <(cd '$work' && qemu-img info chain1/top.qcow2 | grep '^backing file')"
cp "$work/chain2/empty-top.qcow2" "$work/orphan.qcow2"
# (qemu-img info answers too; qemu-img check opens the backing file, and fails.)
check "info and check of an overlay whose backing file is missing still answer" \
    bash -c "'$img' info '$work/orphan.qcow2' | grep -q '^backing file: empty-mid.qcow2' &&
             qemu-img info '$work/orphan.qcow2' | grep -q '^backing file: empty-mid.qcow2' &&
             '$img' check '$work/orphan.qcow2'"

# check's allocation, fragmentation and compression line and image end offset, as
# qemu-img check prints them: scattered writes, then a compressed copy written again.
qemu-img create -q -f qcow2 "$work/frag.qcow2" 10M
qemu-io -f qcow2 -c 'write 5M 64k' -c 'write 0 64k' -c 'write 1M 128k' -c 'write 9M 4k' \
    "$work/frag.qcow2" >/dev/null
qemu-img convert -c -O qcow2 "$work/frag.qcow2" "$work/frag-z.qcow2"
qemu-io -f qcow2 -c 'write 8M 64k' "$work/frag-z.qcow2" >/dev/null
for f in frag.qcow2 frag-z.qcow2; do
    check "check of $f: qemu-img check's cluster line and image end offset" \
        bash -c "diff <('$img' check '$work/$f' | grep -E 'clusters\$|^Image end offset') \
                      <(qemu-img check '$work/$f' | grep -E 'clusters\$|^Image end offset')"
done

# --- we create, qemu verifies -----------------------------------------------------
qemu-img create -q -f raw "$work/backing.raw" 3M
for cluster in $clusters; do
    cl=$(cluster_label "$cluster")
    for compat in 0.10 1.1; do
        file="$work/ours-$cl-$compat.qcow2"
        name="vrt-img create qcow2 cluster $cl compat $compat"
        check "$name: qemu-img check clean, info agrees" \
            bash -c "'$img' create -q -f qcow2 -o cluster_size=$cluster,compat=$compat '$file' 40M &&
                     qemu-img check -f qcow2 '$file' && qemu-img info --output=json '$file' &&
                     qemu-img info --output=json '$file' | grep -q '\"virtual-size\": 41943040' &&
                     qemu-img info --output=json '$file' | grep -q '\"cluster-size\": $cluster' &&
                     qemu-img info --output=json '$file' | grep -q '\"compat\": \"$compat\"'"
        file="$work/ours-$cl-$compat-backed.qcow2"
        check "$name -b: qemu-img check clean, info shows the backing file" \
            bash -c "'$img' create -q -f qcow2 -o cluster_size=$cluster,compat=$compat \
                         -b backing.raw -F raw '$file' &&
                     qemu-img check -f qcow2 '$file' && qemu-img info --output=json '$file' &&
                     qemu-img info --output=json '$file' | grep -q '\"virtual-size\": 3145728' &&
                     qemu-img info --output=json '$file' | grep -q '\"backing-filename\": \"backing.raw\"' &&
                     qemu-img info --output=json '$file' | grep -q '\"backing-filename-format\": \"raw\"' &&
                     qemu-img info --output=json '$file' | grep -q '\"compat\": \"$compat\"'"
    done
done
check "vrt-img info shows a qcow2's cluster size and compat" \
    bash -c "'$img' info -f qcow2 '$work/ours-4k-0.10.qcow2' | tee /dev/stderr |
             grep -q 'cluster_size: 4096' &&
             '$img' info --output=json '$work/ours-4k-0.10.qcow2' | grep -q '\"compat\": \"0.10\"'"
check "vrt-img convert -c to raw: usage error" \
    expect_exit 1 "$img" convert -c -O raw "$work/backing.raw" "$work/never.raw"
check "vrt-img check -r all: refused" \
    expect_exit 1 "$img" check -f qcow2 -r all "$work/ours-64k-1.1.qcow2"
check "vrt-img bench -o l2-cache-size: one table of cache, every read correct" \
    bash -c "'$img' bench -q -f qcow2 -o l2-cache-size=4k -t writeback -c 2000 --output=json \
                 '$work/ours-4k-0.10.qcow2' | grep -q '\"errors\": 0'"
check "vrt-img bench -o: an option the format does not take is refused by name" \
    bash -c "'$img' bench -q -f qcow2 -o l2-cache=1 -c 10 '$work/ours-4k-0.10.qcow2' 2>&1 |
             grep -q \"'l2-cache=1' is not an option\"; test \${PIPESTATUS[0]} -ne 0"
check "vrt-img bench -o without -f: usage error" \
    expect_exit 1 "$img" bench -o l2-cache-size=4k -c 10 "$work/ours-4k-0.10.qcow2"

size=$((24 * 1024 * 1024 + 512))
qemu-img create -q -f raw "$work/source.raw" "$size"
gen_script "$size" 60 1 | qemu-io -f raw "$work/source.raw" >/dev/null
for cluster in 4096 65536 2097152; do
    cl=$(cluster_label "$cluster")
    for compress in "" -c; do
        for compat in 0.10 1.1; do
            [ -z "$compress" ] && [ "$cluster" != 65536 ] && continue
            dst="$work/conv-$cl-$compat$compress.qcow2"
            name="vrt-img convert $compress -O qcow2 cluster $cl compat $compat"
            check "$name: qemu-img compare identical" \
                bash -c "'$img' convert -f raw -O qcow2 $compress \
                             -o cluster_size=$cluster,compat=$compat '$work/source.raw' '$dst' &&
                         qemu-img compare -f raw -F qcow2 '$work/source.raw' '$dst'"
            check "$name: qemu-img check clean" qemu-img check -f qcow2 "$dst"
            [ -n "$compress" ] &&
                check "$name: qemu-img sees compressed clusters" qemu_sees_compressed "$dst"
        done
    done
done

# --- the same writes by qemu-io and by us ------------------------------------------
# The base holds data, compressed clusters and zero clusters (and, in v2, explicitly
# written zeros).
for compat in 1.1 0.10; do
    base="$work/base-$compat.qcow2"
    qemu-img create -q -f qcow2 -o compat=$compat "$base" "$size"
    {
        gen_script "$size" 40 1
        gen_compressed "$size" 65536 40 4
        echo "write -z 1M 1M"
        echo "write -z 10M 192k"
    } | qemu-io -f qcow2 "$base" >/dev/null
    seeds="2 3"
    [ "$compat" = 0.10 ] && seeds=2
    for mode in sync async; do
        for seed in $seeds; do
            gen_script "$size" 120 "$seed" >"$work/script2"
            args=(qcow2 "$work/ours.qcow2")
            [ "$mode" = async ] && args+=(--async)
            name="same writes (compat $compat, $mode, seed $seed)"
            cp --sparse=always "$base" "$work/theirs.qcow2"
            cp --sparse=always "$base" "$work/ours.qcow2"
            qemu-io -f qcow2 "$work/theirs.qcow2" <"$work/script2" >/dev/null
            check "$name: qemu-img compare identical" \
                bash -c "'$vd_io' ${args[*]} <'$work/script2' &&
                         qemu-img compare -f qcow2 -F qcow2 '$work/theirs.qcow2' '$work/ours.qcow2'"
            check "$name: qemu-img check clean" qemu-img check -f qcow2 "$work/ours.qcow2"

            # With an internal snapshot: every cluster is shared, so each write must
            # copy, and the snapshot must still read as the base.
            cp --sparse=always "$base" "$work/ours.qcow2"
            qemu-img snapshot -c snap1 "$work/ours.qcow2"
            check "$name, snapshot: qemu-img compare identical" \
                bash -c "'$vd_io' ${args[*]} <'$work/script2' &&
                         qemu-img compare -f qcow2 -F qcow2 '$work/theirs.qcow2' '$work/ours.qcow2'"
            check "$name, snapshot: qemu-img check clean" qemu-img check -f qcow2 "$work/ours.qcow2"
            check "$name, snapshot: reverting gives back the base" \
                bash -c "qemu-img snapshot -a snap1 '$work/ours.qcow2' &&
                         qemu-img compare -f qcow2 -F qcow2 '$base' '$work/ours.qcow2' &&
                         qemu-img check -f qcow2 '$work/ours.qcow2'"
            # The same uncached: unaligned writes into shared clusters copy through
            # the bounce paths (the old contents of partial sectors).
            if [ "$mode" = async ] && [ "$direct_ok" = yes ]; then
                cp --sparse=always "$base" "$work/ours.qcow2"
                qemu-img snapshot -c snap1 "$work/ours.qcow2"
                check "$name, snapshot, O_DIRECT: qemu-img compare identical" \
                    bash -c "'$vd_io' ${args[*]} --direct <'$work/script2' &&
                             qemu-img compare -f qcow2 -F qcow2 '$work/theirs.qcow2' '$work/ours.qcow2' &&
                             qemu-img check -f qcow2 '$work/ours.qcow2'"
            fi
        done
    done
done

# Over a backing file: writes that cover clusters partly must copy the rest from it.
base="$work/base-1.1.qcow2"
for compat in 1.1 0.10; do
    for cluster in 65536 4096; do
        over="$work/over.qcow2"
        rm -f "$over"
        qemu-img create -q -f qcow2 -o "cluster_size=$cluster,compat=$compat" \
            -b "$(basename "$base")" -F qcow2 "$over"
        gen_script "$size" 20 5 | qemu-io -f qcow2 "$over" >/dev/null
        for mode in sync async; do
            gen_script "$size" 120 6 >"$work/script2"
            args=(qcow2 "$work/ours.qcow2")
            [ "$mode" = async ] && args+=(--async)
            name="same writes over a backing file (cluster $(cluster_label "$cluster"), compat $compat, $mode)"
            cp --sparse=always "$over" "$work/theirs.qcow2"
            cp --sparse=always "$over" "$work/ours.qcow2"
            qemu-io -f qcow2 "$work/theirs.qcow2" <"$work/script2" >/dev/null
            check "$name: qemu-img compare identical" \
                bash -c "'$vd_io' ${args[*]} <'$work/script2' &&
                         qemu-img compare -f qcow2 -F qcow2 '$work/theirs.qcow2' '$work/ours.qcow2'"
            check "$name: qemu-img check clean" qemu-img check -f qcow2 "$work/ours.qcow2"
            if [ "$mode" = async ] && [ "$direct_ok" = yes ]; then
                cp --sparse=always "$over" "$work/ours.qcow2"
                check "$name, O_DIRECT: qemu-img compare identical" \
                    bash -c "'$vd_io' ${args[*]} --direct <'$work/script2' &&
                             qemu-img compare -f qcow2 -F qcow2 '$work/theirs.qcow2' '$work/ours.qcow2' &&
                             qemu-img check -f qcow2 '$work/ours.qcow2'"
            fi
        done
    done
done

# --- every refcount width qemu-img can create --------------------------------------
# The same writes by qemu-io and by us on images with 1- to 64-bit refcounts (the
# width changes how refcount blocks pack; 16 is what both create by default).
gen_script $((8 * 1024 * 1024)) 40 21 >"$work/script_widths"
for bits in 1 2 4 8 32 64; do
    qemu-img create -q -f qcow2 -o refcount_bits=$bits,cluster_size=4096 "$work/w$bits.qcow2" 8M
    qemu-io -f qcow2 -c 'write -P 0x21 0 1M' "$work/w$bits.qcow2" >/dev/null
    cp "$work/w$bits.qcow2" "$work/w${bits}q.qcow2"
    qemu-io -f qcow2 "$work/w${bits}q.qcow2" <"$work/script_widths" >/dev/null
    check "refcount_bits=$bits: same writes, qemu-img compare identical and check clean" \
        bash -c "'$vd_io' qcow2 '$work/w$bits.qcow2' <'$work/script_widths' &&
                 qemu-img compare -q '$work/w${bits}q.qcow2' '$work/w$bits.qcow2' &&
                 qemu-img check -q '$work/w$bits.qcow2' && '$img' check -f qcow2 '$work/w$bits.qcow2'"
done

# --- persistent dirty bitmaps --------------------------------------------------------
# qemu-img bitmap --add, then writes that dirty them: the bitmap directory, tables and
# data clusters are metadata our check must count (it once called them 3 leaks, and a
# repair would have handed them out again).  A read or a repair keeps them valid; our
# first write of guest data marks them stale (the autoclear bit), after which both
# checkers agree that their clusters are leaked.
bm="$work/bitmaps.qcow2"
qemu-img create -q -f qcow2 "$bm" 64M
qemu-img bitmap --add "$bm" b0
qemu-img bitmap --add -g 512k "$bm" b1
qemu-io -f qcow2 -c 'write -P 1 0 4M' -c 'write -P 2 32M 1M' "$bm" >/dev/null
check "bitmaps: qemu-img check is clean" qemu-img check -f qcow2 "$bm"
check "bitmaps: vrt-img check is clean (bitmap structures counted)" "$img" check -f qcow2 "$bm"
check "bitmaps: vrt-img check -r leaks frees nothing; qemu-img still sees both bitmaps" \
    bash -c "cp '$bm' '$work/bm-before' && '$img' check -f qcow2 -r leaks '$bm' &&
             cmp '$bm' '$work/bm-before' && qemu-img check -f qcow2 '$bm' &&
             test \$(qemu-img info --output=json '$bm' | grep -c '\"name\": \"b[01]\"') = 2"
check "bitmaps: a read-only convert leaves them valid" \
    bash -c "'$img' convert -f qcow2 -O raw '$bm' '$work/bm.raw' && cmp '$bm' '$work/bm-before'"
check "bitmaps: after our first write both checkers report the same leaks" \
    bash -c "echo 'write -P 7 0 4096' | '$vd_io' qcow2 '$bm' &&
             q=\$(qemu-img check -f qcow2 '$bm' 2>/dev/null | sed -n 's/^\([0-9]*\) leaked clusters.*/\1/p');
             o=\$('$img' check -f qcow2 '$bm' 2>/dev/null | sed -n 's/^\([0-9]*\) leaked clusters.*/\1/p');
             echo \"qemu \$q, ours \$o\"; test -n \"\$q\" && test \"\$q\" = \"\$o\" &&
             qemu-img compare -f qcow2 -F raw '$bm' '$work/bm.raw'; test \$? = 1"

# --- check: hand-made leaks and corruptions -----------------------------------------
# be64 FILE OFFSET: the big-endian 64-bit number at OFFSET.
be64() {
    echo $((16#$(od -An -tx1 -j"$2" -N8 "$1" | tr -d ' \n')))
}

# set_refcount FILE CLUSTER VALUE: writes a 16-bit refcount into the first refcount
# block (64k clusters: it covers the first 32768 clusters, all this image has).
set_refcount() {
    local file=$1 index=$2 value=$3
    local table block
    table=$(be64 "$file" 48)
    block=$(be64 "$file" "$table")
    printf "$(printf '\\x%02x\\x%02x' $((value >> 8)) $((value & 255)))" |
        dd of="$file" bs=1 seek=$((block + 2 * index)) conv=notrunc status=none
}

leaky="$work/leaky.qcow2"
qemu-img create -q -f qcow2 "$leaky" 8M
qemu-io -f qcow2 -c 'write -P 1 0 3M' -c 'write -c -P 2 4M 64k' "$leaky" >/dev/null
qemu-img convert -f qcow2 -O raw "$leaky" "$work/leaky-contents.raw"
data_cluster=$(($(qemu-img map -f qcow2 --output=json "$leaky" |
    sed -n 's/.*"offset": *\([0-9]*\).*/\1/p' | head -n 1) / 65536))
file_clusters=$((($(stat -c %s "$leaky") + 65535) / 65536))
cp "$leaky" "$work/corrupt.qcow2"
# Two clusters added at the end of the file, counted as used, referenced by nothing
# (what a crash between allocating and linking a cluster leaves).  A used cluster
# counted twice would be a leak as well, but qemu-img then also reports its L2 entry's
# COPIED flag as wrong, a corruption.
truncate -s $(((file_clusters + 2) * 65536)) "$leaky"
set_refcount "$leaky" "$file_clusters" 1
set_refcount "$leaky" $((file_clusters + 1)) 1
check "hand-made leaks: qemu-img agrees they are leaks (exit 3)" \
    expect_exit 3 qemu-img check -f qcow2 "$leaky"
check "vrt-img check: leaks only exits 3" expect_exit 3 "$img" check -f qcow2 "$leaky"
check "vrt-img check -r leaks repairs, then exits 0" \
    bash -c "'$img' check -f qcow2 -r leaks '$leaky'; '$img' check -f qcow2 '$leaky' &&
             qemu-img check -f qcow2 '$leaky' &&
             qemu-img compare -f raw -F qcow2 '$work/leaky-contents.raw' '$leaky'"
# Corruption: a used data cluster whose refcount is 0 (the next write would reuse it).
set_refcount "$work/corrupt.qcow2" "$data_cluster" 0
check "hand-made corruption: qemu-img agrees (exit 2)" \
    expect_exit 2 qemu-img check -f qcow2 "$work/corrupt.qcow2"
check "vrt-img check: corruption exits 2" \
    expect_exit 2 "$img" check -f qcow2 "$work/corrupt.qcow2"
check "vrt-img check -r leaks: corruption still exits 2" \
    expect_exit 2 "$img" check -f qcow2 -r leaks "$work/corrupt.qcow2"

# --- resize, both ways -------------------------------------------------------------
# The same resize by qemu-img and by vrt-img of copies of one image must leave images
# qemu-img compare calls identical (-s: sizes too), each clean by qemu-img check.
same_resize() {
    local size=$1 theirs=$2 ours=$3 a="$work/rs-qemu.qcow2" b="$work/rs-ours.qcow2"
    cp "$work/rs.qcow2" "$a" && cp "$work/rs.qcow2" "$b" &&
        qemu-img resize -q -f qcow2 $theirs "$a" "$size" &&
        "$img" resize -q -f qcow2 $ours "$b" "$size" &&
        qemu-img check -q -f qcow2 "$b" &&
        [ "$(qemu-img info -f qcow2 --output=json "$a" | virtual_size_of)" = \
          "$(qemu-img info -f qcow2 --output=json "$b" | virtual_size_of)" ] &&
        qemu-img compare -q -s -f qcow2 -F qcow2 "$a" "$b"
}
virtual_size_of() {
    sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p'
}
rs_size=$((16 * 1024 * 1024))
for clusters in 512 65536; do
    qemu-img create -q -f qcow2 -o cluster_size=$clusters "$work/rs.qcow2" "$rs_size"
    gen_script "$rs_size" 40 7 >"$work/rs-script"
    qemu-io -f qcow2 "$work/rs.qcow2" <"$work/rs-script" >/dev/null
    check "resize +1G, $clusters-byte clusters (L1 table moves): same as qemu-img's" \
        same_resize +1G "" ""
    check "resize to 16M + 3 sectors, $clusters-byte clusters: same as qemu-img's" \
        same_resize $((rs_size + 1536)) "" ""
    check "resize --shrink --force -5M, $clusters-byte clusters: same as qemu-img --shrink" \
        same_resize -5M --shrink "--shrink --force"
done
# qemu-img resize --shrink has no --force; ours refuses to drop data without it.
cp "$work/rs.qcow2" "$work/rs-keep.qcow2"
check "vrt-img resize --shrink past data: refused, says why, image unchanged" \
    bash -c "! '$img' resize -f qcow2 --shrink '$work/rs.qcow2' 8M 2>'$work/rs.err' &&
             grep -q 'holds data at offset' '$work/rs.err' && grep -q -- --force '$work/rs.err' &&
             cmp '$work/rs.qcow2' '$work/rs-keep.qcow2'"
check "vrt-img resize to a smaller size without --shrink: refused, as qemu-img refuses" \
    bash -c "! '$img' resize -f qcow2 '$work/rs.qcow2' 8M 2>'$work/rs.err' &&
             grep -q -- '--shrink' '$work/rs.err' && ! qemu-img resize -q -f qcow2 '$work/rs-keep.qcow2' 8M 2>/dev/null &&
             cmp '$work/rs.qcow2' '$work/rs-keep.qcow2'"
check "vrt-img resize without -f: refused (a writable open never probes)" \
    bash -c "! '$img' resize '$work/rs.qcow2' +1M 2>'$work/rs.err' && grep -q -- '-f' '$work/rs.err'"
# qemu resizes, we read.
qemu-img resize -q -f qcow2 "$work/rs.qcow2" +7M
check "qemu-img resize +7M: vrt-img reads what qemu-img reads" \
    converts_identically qcow2 "$work/rs.qcow2"
check "qemu-img resize +7M: vrt-img info has the new size" \
    bash -c "[ \"\$('$img' info -f qcow2 --output=json '$work/rs.qcow2' | sed -n 's/.*\"virtual-size\": *\([0-9]*\).*/\1/p')\" = $((rs_size + 7 * 1024 * 1024)) ]"
# An overlay grown over a larger backing file reads zeros there, as qemu-img's does.
qemu-img create -q -f raw "$work/rs-base.raw" 32M
qemu-io -f raw -c 'write -P 0xbb 0 32M' "$work/rs-base.raw" >/dev/null
qemu-img create -q -f qcow2 -b "$work/rs-base.raw" -F raw "$work/rs.qcow2" 8M
qemu-io -f qcow2 -c 'write -P 0x11 1M 1M' "$work/rs.qcow2" >/dev/null
check "resize an overlay over a larger backing file: same as qemu-img's (zeros, not backing)" \
    same_resize 24M "" ""
check "resize an overlay: the grown range reads zeros in qemu-io" \
    bash -c "qemu-io -f qcow2 -c 'read -P 0 8M 16M' '$work/rs-ours.qcow2' | grep -q 'read 16777216/16777216'"
# Version 2 with an internal snapshot: qemu-img refuses, and so do we.
qemu-img create -q -f qcow2 -o compat=0.10 "$work/rs-v2.qcow2" 8M
qemu-img snapshot -c snap "$work/rs-v2.qcow2"
check "resize a v2 image with a snapshot: refused, as qemu-img refuses" \
    bash -c "! qemu-img resize -q -f qcow2 '$work/rs-v2.qcow2' +1M 2>/dev/null &&
             ! '$img' resize -f qcow2 '$work/rs-v2.qcow2' +1M 2>'$work/rs.err' &&
             grep -q 'snapshots' '$work/rs.err'"

# --- internal snapshots, both ways ---------------------------------------------------
# The disk at each snapshot is saved as raw; a snapshot applied by either tool must
# read back exactly that, and each tool must list what the other made as it would.
sn_at() { qemu-img convert -f qcow2 -O raw "$1" "$work/$2.raw"; }
same_as_raw() { qemu-img compare -q -f qcow2 -F raw "$1" "$work/$2.raw"; }
for clusters in 512 65536; do
    sn="$work/sn-$clusters.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size=$clusters "$sn" 8M
    qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -c -P 0x22 2M 64k' \
        -c 'write -z 3M 64k' "$sn" >/dev/null
    sn_at "$sn" sn-one
    "$img" snapshot -q -f qcow2 -c one "$sn"
    qemu-io -f qcow2 -c 'write -P 0x33 4k 8k' -c 'discard 512k 64k' -c 'write -P 0x44 6M 1M' \
        "$sn" >/dev/null
    sn_at "$sn" sn-two
    "$img" snapshot -q -f qcow2 -c two "$sn"
    qemu-io -f qcow2 -c 'write -P 0x55 0 4M' "$sn" >/dev/null
    sn_at "$sn" sn-now
    check "snapshot -c twice, $clusters-byte clusters: qemu-img check clean" \
        qemu-img check -q -f qcow2 "$sn"
    check "snapshot -l, $clusters-byte clusters: the same list as qemu-img snapshot -l" \
        bash -c "diff <('$img' snapshot -l '$sn') <(qemu-img snapshot -l '$sn')"
    for which in one two; do
        cp "$sn" "$work/sn-theirs.qcow2"
        check "our snapshot '$which', $clusters-byte clusters: qemu-img snapshot -a restores it" \
            bash -c "qemu-img snapshot -a $which '$work/sn-theirs.qcow2' &&
                     qemu-img compare -q -f qcow2 -F raw '$work/sn-theirs.qcow2' '$work/sn-$which.raw'"
        cp "$sn" "$work/sn-ours.qcow2"
        check "vrt-img snapshot -a '$which', $clusters-byte clusters: the saved disk, check clean" \
            bash -c "'$img' snapshot -f qcow2 -a $which '$work/sn-ours.qcow2' &&
                     qemu-img compare -q -f qcow2 -F raw '$work/sn-ours.qcow2' '$work/sn-$which.raw' &&
                     qemu-img check -q -f qcow2 '$work/sn-ours.qcow2'"
        check "vrt-img and qemu-img apply '$which' alike: the images compare identical" \
            qemu-img compare -q -f qcow2 -F qcow2 "$work/sn-ours.qcow2" "$work/sn-theirs.qcow2"
    done
    # qemu's snapshots, our delete and apply.
    cp "$sn" "$work/sn-q.qcow2"
    qemu-img snapshot -c three "$work/sn-q.qcow2"
    check "vrt-img snapshot -d one (qemu-img's list then): two and three left, check clean" \
        bash -c "'$img' snapshot -f qcow2 -d one '$work/sn-q.qcow2' &&
                 qemu-img check -q -f qcow2 '$work/sn-q.qcow2' &&
                 qemu-img snapshot -l '$work/sn-q.qcow2' | awk 'NR > 2 { print \$2 }' | tr '\n' ' ' |
                     grep -qx 'two three '"
    check "after our delete: qemu-img applies the others as they were" \
        bash -c "qemu-img snapshot -a three '$work/sn-q.qcow2' &&
                 qemu-img compare -q -f qcow2 -F raw '$work/sn-q.qcow2' '$work/sn-now.raw' &&
                 qemu-img snapshot -a two '$work/sn-q.qcow2' &&
                 qemu-img compare -q -f qcow2 -F raw '$work/sn-q.qcow2' '$work/sn-two.raw'"
    check "vrt-img applies qemu-img's snapshot 'three'" \
        bash -c "'$img' snapshot -f qcow2 -a three '$work/sn-q.qcow2' &&
                 qemu-img compare -q -f qcow2 -F raw '$work/sn-q.qcow2' '$work/sn-now.raw' &&
                 qemu-img check -q -f qcow2 '$work/sn-q.qcow2'"
    check "vrt-img snapshot -d of every snapshot: no leaks, qemu-img lists none" \
        bash -c "for s in two three; do '$img' snapshot -f qcow2 -d \$s '$work/sn-q.qcow2' || exit 1; done &&
                 qemu-img check -q -f qcow2 '$work/sn-q.qcow2' &&
                 [ -z \"\$(qemu-img snapshot -l '$work/sn-q.qcow2')\" ] &&
                 qemu-img compare -q -f qcow2 -F raw '$work/sn-q.qcow2' '$work/sn-now.raw'"
done
# A snapshot taken at one size and applied after a resize gives the disk that size
# again, as qemu-img's does.
qemu-img create -q -f qcow2 "$work/sn-size.qcow2" 4M
qemu-io -f qcow2 -c 'write -P 0x66 0 4M' "$work/sn-size.qcow2" >/dev/null
"$img" snapshot -q -f qcow2 -c small "$work/sn-size.qcow2"
"$img" resize -q -f qcow2 "$work/sn-size.qcow2" 12M
cp "$work/sn-size.qcow2" "$work/sn-size-q.qcow2"
check "apply a snapshot of a smaller disk: the size it had, as qemu-img's apply" \
    bash -c "'$img' snapshot -f qcow2 -a small '$work/sn-size.qcow2' &&
             qemu-img snapshot -a small '$work/sn-size-q.qcow2' &&
             qemu-img info --output=json '$work/sn-size.qcow2' | grep -q 'virtual-size.: 4194304,' &&
             qemu-img compare -q -f qcow2 -F qcow2 '$work/sn-size.qcow2' '$work/sn-size-q.qcow2'"
check "snapshot -l --output=json: qemu-img info's snapshot keys" \
    bash -c "'$img' snapshot -l --output=json '$work/sn-size.qcow2' > '$work/sn.json' &&
             for k in id name vm-state-size date-sec date-nsec vm-clock-sec vm-clock-nsec icount; do
                 grep -q \"\\\"\$k\\\": \" '$work/sn.json' || exit 1; done &&
             grep -q '\"name\": \"small\"' '$work/sn.json'"
check "vrt-img snapshot --help: exit 0, every action described" \
    bash -c "'$img' snapshot --help > '$work/sn.help' &&
             for o in -l -c -a -d -U; do grep -q -- \"^  \$o\" '$work/sn.help' || exit 1; done"
# Long names (and UTF-8) in qemu-img's columns.
qemu-img create -q -f qcow2 "$work/sn-names.qcow2" 1M
qemu-img snapshot -c "a-name-longer-than-sixteen-bytes" "$work/sn-names.qcow2"
"$img" snapshot -q -f qcow2 -c "ünïcödé name" "$work/sn-names.qcow2"
check "snapshot -l with long and UTF-8 names: the same list as qemu-img snapshot -l" \
    bash -c "diff <('$img' snapshot -l '$work/sn-names.qcow2') <(qemu-img snapshot -l '$work/sn-names.qcow2')"
# A refused apply changes nothing: a dirty bitmap stays valid.
qemu-img create -q -f qcow2 "$work/sn-bitmap.qcow2" 4M
qemu-img bitmap --add "$work/sn-bitmap.qcow2" b0
check "snapshot -a of an unknown snapshot on an image with a bitmap: refused, bitmap still valid" \
    bash -c "! '$img' snapshot -f qcow2 -a nosuch '$work/sn-bitmap.qcow2' 2>/dev/null &&
             qemu-img check -q '$work/sn-bitmap.qcow2' &&
             ! qemu-img info '$work/sn-bitmap.qcow2' 2>&1 | grep -qi 'lacking bitmap support'"
# Refusals.
qemu-img create -q -f raw "$work/sn.raw" 1M
check "vrt-img snapshot -c on raw: exit 1, no internal snapshots" \
    bash -c "'$img' snapshot -f raw -c x '$work/sn.raw' 2>'$work/sn.err'; [ \$? = 1 ] &&
             grep -q 'no internal snapshots' '$work/sn.err'"
check "vrt-img snapshot -c without -f: refused (a writable open never probes)" \
    bash -c "! '$img' snapshot -c x '$work/sn-size.qcow2' 2>'$work/sn.err' && grep -q -- '-f' '$work/sn.err'"
check "vrt-img snapshot -c and -a together: refused, as qemu-img refuses" \
    bash -c "! '$img' snapshot -f qcow2 -c x -a y '$work/sn-size.qcow2' 2>/dev/null &&
             ! qemu-img snapshot -c x -a y '$work/sn-size.qcow2' 2>/dev/null"
check "vrt-img snapshot -a of an unknown snapshot: exit 1, names it, image unchanged" \
    bash -c "cp '$work/sn-size.qcow2' '$work/sn-keep.qcow2' &&
             ! '$img' snapshot -f qcow2 -a nope '$work/sn-size.qcow2' 2>'$work/sn.err' &&
             grep -q nope '$work/sn.err' && cmp '$work/sn-size.qcow2' '$work/sn-keep.qcow2'"
check "vrt-img snapshot -c beside a running writer (qemu-io holds it): refused by its lock" \
    bash -c "( sleep 3 | qemu-io -f qcow2 '$work/sn-size.qcow2' >/dev/null 2>&1 & ) ; sleep 1;
             ! '$img' snapshot -f qcow2 -c x '$work/sn-size.qcow2' 2>'$work/sn.err';
             rc=\$?; sleep 3; [ \$rc = 0 ] && grep -qi lock '$work/sn.err'"

# --- info: the format's options and state flags, as qemu-img info reports them ----------
info_keys() {
    grep -E '"(compat|compression-type|lazy-refcounts|refcount-bits|corrupt|extended-l2|dirty-flag)"' |
        tr -d ' ,'
}
same_info_keys() {
    diff <("$img" info -f qcow2 --output=json "$1" | info_keys) \
        <(qemu-img info -f qcow2 --output=json "$1" | info_keys)
}
qemu-img create -q -f qcow2 -o compat=0.10 "$work/in-v2.qcow2" 1M
qemu-img create -q -f qcow2 -o refcount_bits=4 "$work/in-v3.qcow2" 1M
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$work/in-lazy.qcow2" 1M
cp "$work/in-lazy.qcow2" "$work/in-dirty.qcow2"
printf '\001' | dd of="$work/in-dirty.qcow2" bs=1 seek=79 conv=notrunc status=none
cp "$work/in-v3.qcow2" "$work/in-corrupt.qcow2"
printf '\002' | dd of="$work/in-corrupt.qcow2" bs=1 seek=79 conv=notrunc status=none
for kind in v2 v3 lazy dirty corrupt; do
    check "info --output=json of a $kind image: qemu-img's compat, compression, refcount, flag keys" \
        same_info_keys "$work/in-$kind.qcow2"
done
check "info of a dirty image: dirty-flag true (qemu-img says so too)" \
    bash -c "'$img' info -f qcow2 --output=json '$work/in-dirty.qcow2' | grep -q '\"dirty-flag\": true'"
check "info (text) of a v3 image: qemu-img's format-specific lines" \
    bash -c "diff <('$img' info '$work/in-lazy.qcow2' | sed -n '/^Format specific/,\$p' | grep -v 'blocks:') \
                  <(qemu-img info '$work/in-lazy.qcow2' | sed -n '/^Format specific/,\$p')"

# --- rebase, both ways ---------------------------------------------------------------
# The same rebase by qemu-img and by vrt-img of copies of one overlay: the two results
# compare identical, read as the overlay read before (safe mode), and name the same file.
backing_line() { qemu-img info -U "$1" | grep '^backing file' | tr '\n' ' '; }
same_rebase() {
    cp "$work/rb-top.qcow2" "$work/rb-ours.qcow2"
    cp "$work/rb-top.qcow2" "$work/rb-theirs.qcow2"
    "$img" rebase -f qcow2 "$@" "$work/rb-ours.qcow2" &&
        qemu-img rebase -f qcow2 "$@" "$work/rb-theirs.qcow2" &&
        qemu-img compare -q "$work/rb-ours.qcow2" "$work/rb-theirs.qcow2" &&
        [ "$(backing_line "$work/rb-ours.qcow2")" = "$(backing_line "$work/rb-theirs.qcow2")" ] &&
        qemu-img check -q "$work/rb-ours.qcow2"
}
for clusters in 512 65536; do
    qemu-img create -q -f qcow2 "$work/rb-a.qcow2" 8M
    qemu-io -f qcow2 -c 'write -P 0x11 0 5M' "$work/rb-a.qcow2" >/dev/null
    qemu-img create -q -f raw "$work/rb-b.raw" 6M
    qemu-io -f raw -c 'write -P 0x22 1M 4M' "$work/rb-b.raw" >/dev/null
    qemu-img create -q -f qcow2 -o cluster_size=$clusters -b rb-a.qcow2 -F qcow2 "$work/rb-top.qcow2" 8M
    qemu-io -f qcow2 -c 'write -P 0x33 100k 300k' -c 'write -z 2M 64k' -c 'write -P 0x44 7M 4k' \
        "$work/rb-top.qcow2" >/dev/null
    qemu-img convert -f qcow2 -O raw "$work/rb-top.qcow2" "$work/rb-before.raw"
    check "rebase onto a smaller raw file, $clusters-byte clusters: same as qemu-img's, same disk" \
        bash -c "$(declare -f backing_line same_rebase); img='$img' work='$work'
                 same_rebase -b rb-b.raw -F raw &&
                 qemu-img compare -q -F raw '$work/rb-ours.qcow2' '$work/rb-before.raw'"
    check "rebase -b '' (standalone), $clusters-byte clusters: same as qemu-img's, same disk" \
        bash -c "$(declare -f backing_line same_rebase); img='$img' work='$work'
                 same_rebase -b '' &&
                 ! qemu-img info '$work/rb-ours.qcow2' | grep -q '^backing file' &&
                 qemu-img compare -q -F raw '$work/rb-ours.qcow2' '$work/rb-before.raw'"
    check "rebase -u, $clusters-byte clusters: only the name, as qemu-img rebase -u" \
        bash -c "$(declare -f backing_line same_rebase); img='$img' work='$work'
                 same_rebase -u -b rb-b.raw -F raw"
done
mv "$work/rb-a.qcow2" "$work/rb-moved.qcow2"
check "rebase -u of an overlay whose backing file moved: named again, reads as before" \
    bash -c "cp '$work/rb-top.qcow2' '$work/rb-m.qcow2' &&
             '$img' rebase -f qcow2 -u -b rb-moved.qcow2 -F qcow2 '$work/rb-m.qcow2' &&
             qemu-img compare -q -F raw '$work/rb-m.qcow2' '$work/rb-before.raw'"
check "safe rebase of an overlay whose backing file is gone: refused, image unchanged" \
    bash -c "cp '$work/rb-top.qcow2' '$work/rb-keep.qcow2' &&
             ! '$img' rebase -f qcow2 -b rb-b.raw -F raw '$work/rb-top.qcow2' 2>/dev/null &&
             cmp '$work/rb-top.qcow2' '$work/rb-keep.qcow2'"
check "rebase without -b: refused (qemu-img needs it too)" \
    bash -c "! '$img' rebase -f qcow2 '$work/rb-top.qcow2' 2>'$work/rb.err' && grep -q -- '-b' '$work/rb.err'"

# --- commit, both ways ---------------------------------------------------------------
# The same commit by qemu-img and by vrt-img of copies of one chain: the backing files
# and the overlays compare identical afterwards, and the overlay reads as before.
for keep in "" -d; do
    qemu-img create -q -f qcow2 "$work/cm-base.qcow2" 4M
    qemu-io -f qcow2 -c 'write -P 0x11 0 4M' "$work/cm-base.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b cm-base.qcow2 -F qcow2 "$work/cm-top.qcow2" 8M
    qemu-io -f qcow2 -c 'write -P 0x22 1M 100k' -c 'write -z 2M 64k' -c 'write -P 0x33 6M 64k' \
        "$work/cm-top.qcow2" >/dev/null
    qemu-img convert -f qcow2 -O raw "$work/cm-top.qcow2" "$work/cm-before.raw"
    for side in ours theirs; do
        cp "$work/cm-base.qcow2" "$work/cm-base-$side.qcow2"
        cp "$work/cm-top.qcow2" "$work/cm-top-$side.qcow2"
        qemu-img rebase -q -u -b "cm-base-$side.qcow2" -F qcow2 "$work/cm-top-$side.qcow2"
    done
    # shellcheck disable=SC2086
    check "commit ${keep:-(emptying)}: vrt-img's base and overlay as qemu-img commit's" \
        bash -c "'$img' commit -q -f qcow2 $keep '$work/cm-top-ours.qcow2' &&
                 qemu-img commit -q $keep '$work/cm-top-theirs.qcow2' &&
                 qemu-img compare -q '$work/cm-base-ours.qcow2' '$work/cm-base-theirs.qcow2' &&
                 qemu-img compare -q -F raw '$work/cm-base-ours.qcow2' '$work/cm-before.raw' &&
                 qemu-img compare -q -F raw '$work/cm-top-ours.qcow2' '$work/cm-before.raw' &&
                 qemu-img check -q '$work/cm-base-ours.qcow2' && qemu-img check -q '$work/cm-top-ours.qcow2' &&
                 [ \"\$(qemu-img map --output=json '$work/cm-top-ours.qcow2' | grep -c '\"depth\": 0')\" = \
                   \"\$(qemu-img map --output=json '$work/cm-top-theirs.qcow2' | grep -c '\"depth\": 0')\" ]"
done
check "commit prints 'Image committed.' as qemu-img does" \
    bash -c "cp '$work/cm-top.qcow2' '$work/cm-t.qcow2' && cp '$work/cm-base.qcow2' '$work/cm-b.qcow2' &&
             qemu-img rebase -q -u -b cm-b.qcow2 -F qcow2 '$work/cm-t.qcow2' &&
             [ \"\$('$img' commit -f qcow2 '$work/cm-t.qcow2')\" = 'Image committed.' ]"
check "commit of an image without a backing file: refused, as qemu-img refuses" \
    bash -c "! '$img' commit -f qcow2 '$work/cm-base.qcow2' 2>'$work/cm.err' &&
             grep -q 'no backing file' '$work/cm.err' && ! qemu-img commit -q '$work/cm-base.qcow2' 2>/dev/null"
check "commit beside another user of the backing file (qemu-io holds it): refused by its lock" \
    bash -c "( sleep 3 | qemu-io -f qcow2 '$work/cm-base.qcow2' >/dev/null 2>&1 & ) ; sleep 1;
             ! '$img' commit -f qcow2 '$work/cm-top.qcow2' 2>'$work/cm.err'; rc=\$?; sleep 3;
             [ \$rc = 0 ] && grep -qi lock '$work/cm.err' &&
             qemu-img compare -q -F raw '$work/cm-top.qcow2' '$work/cm-before.raw'"

# --- info --backing-chain --------------------------------------------------------------
qemu-img create -q -f raw "$work/ch-0.raw" 4M
qemu-img create -q -f qcow2 -b ch-0.raw -F raw "$work/ch-1.qcow2" 4M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' "$work/ch-1.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b ch-1.qcow2 -F qcow2 "$work/ch-2.qcow2" 6M
check "info --backing-chain: qemu-img's text for every image of a 3-deep chain" \
    bash -c "diff <('$img' info -f qcow2 --backing-chain '$work/ch-2.qcow2' | grep -v 'blocks:') \
                  <(qemu-img info --backing-chain '$work/ch-2.qcow2')"
check "info --backing-chain --output=json: an array of the 3 images" \
    bash -c "'$img' info -f qcow2 --backing-chain --output=json '$work/ch-2.qcow2' > '$work/ch.json' &&
             [ \"\$(grep -c '\"filename\"' '$work/ch.json')\" = 3 ] && head -c1 '$work/ch.json' | grep -q '\\['"
check "info --backing-chain without -f: refused (following the chain needs -f)" \
    bash -c "! '$img' info --backing-chain '$work/ch-2.qcow2' 2>'$work/ch.err' && grep -q -- '-f' '$work/ch.err'"

# --- convert -n: into an existing image --------------------------------------------------
qemu-img create -q -f qcow2 "$work/cn-src.qcow2" 8M
qemu-io -f qcow2 -c 'write -P 0x17 1M 2M' -c 'write -P 0x18 6M 64k' "$work/cn-src.qcow2" >/dev/null
for fmt in qcow2 raw; do
    qemu-img create -q -f $fmt "$work/cn-dst.$fmt" 8M
    qemu-io -f $fmt -c 'write -P 0x33 0 8M' "$work/cn-dst.$fmt" >/dev/null
    cp "$work/cn-dst.$fmt" "$work/cn-theirs.$fmt"
    check "convert -n into an existing $fmt image full of data: as qemu-img convert -n" \
        bash -c "'$img' convert -q -n -f qcow2 -O $fmt '$work/cn-src.qcow2' '$work/cn-dst.$fmt' &&
                 qemu-img convert -n -f qcow2 -O $fmt '$work/cn-src.qcow2' '$work/cn-theirs.$fmt' &&
                 qemu-img compare -q -f qcow2 -F $fmt '$work/cn-src.qcow2' '$work/cn-dst.$fmt' &&
                 qemu-img compare -q -f $fmt -F $fmt '$work/cn-dst.$fmt' '$work/cn-theirs.$fmt'"
done
qemu-img create -q -f qcow2 "$work/cn-zero.qcow2" 8M
check "convert -n --target-is-zero into a new image: the same copy" \
    bash -c "'$img' convert -q -n --target-is-zero -f qcow2 -O qcow2 '$work/cn-src.qcow2' '$work/cn-zero.qcow2' &&
             qemu-img compare -q '$work/cn-src.qcow2' '$work/cn-zero.qcow2' && qemu-img check -q '$work/cn-zero.qcow2'"
qemu-img create -q -f qcow2 "$work/cn-small.qcow2" 4M
check "convert -n into a smaller image: refused, image unchanged" \
    bash -c "cp '$work/cn-small.qcow2' '$work/cn-keep.qcow2' &&
             ! '$img' convert -q -n -O qcow2 '$work/cn-src.qcow2' '$work/cn-small.qcow2' 2>'$work/cn.err' &&
             grep -q smaller '$work/cn.err' && cmp '$work/cn-small.qcow2' '$work/cn-keep.qcow2'"
check "convert --target-is-zero without -n: refused, as qemu-img refuses" \
    bash -c "! '$img' convert -q --target-is-zero -O qcow2 '$work/cn-src.qcow2' '$work/cn-x.qcow2' 2>/dev/null &&
             ! qemu-img convert -q --target-is-zero -O qcow2 '$work/cn-src.qcow2' '$work/cn-x.qcow2' 2>/dev/null &&
             [ ! -e '$work/cn-x.qcow2' ]"

summary
