#!/usr/bin/env bash
# qemu-img and qemu-io as the oracle for the VD layer and vrt-img, both ways:
#   - qemu writes an image, we read it: convert to raw byte-identical, same data map,
#     same virtual size;
#   - we create and convert images, qemu checks and compares them;
#   - the same random write script applied by qemu-io and by us (vd_io, synchronous and
#     queued) leaves identical contents;
#   - vrt-img check and compare exit codes.
# Every fixture is generated here.  Exits 77 when qemu-utils is not installed.  Prints a
# CUnit-style summary row so the test totals count each check.
set -u

. "$(dirname "$0")/qemu_common.sh"

same_data_map() {
    local fmt=$1 file=$2
    diff <("$img" map -f "$fmt" --output=json "$file" | ranges data) \
         <(qemu-img map -f "$fmt" --output=json "$file" | ranges data)
}

virtual_size_of() {
    sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p'
}

same_virtual_size() {
    local fmt=$1 file=$2
    local ours theirs
    ours=$("$img" info -f "$fmt" --output=json "$file" | virtual_size_of)
    theirs=$(qemu-img info -f "$fmt" --output=json "$file" | virtual_size_of)
    echo "ours=$ours qemu=$theirs"
    [ -n "$ours" ] && [ "$ours" = "$theirs" ]
}

qemu_check_clean() {
    qemu-img check -f "$1" "$2"
}

# --- qemu creates, we read --------------------------------------------------------
size=$((24 * 1024 * 1024 + 512))
gen_script "$size" 60 1 >"$work/script1"
for variant in raw vdi vdi-static; do
    fmt=${variant%-static}
    file="$work/qemu-made.$variant"
    opts=()
    [ "$variant" = vdi-static ] && opts=(-o static=on)
    qemu-img create -q -f "$fmt" "${opts[@]}" "$file" "$size"
    qemu-io -f "$fmt" "$file" <"$work/script1" >/dev/null
    check "qemu-made $variant: convert to raw is byte-identical" converts_identically "$fmt" "$file"
    check "qemu-made $variant: map data ranges agree with qemu-img map" same_data_map "$fmt" "$file"
    check "qemu-made $variant: virtual size agrees with qemu-img info" same_virtual_size "$fmt" "$file"
    if [ "$fmt" = raw ]; then
        check "qemu-made raw: vrt-img check has nothing to check (exit 63, as qemu-img)" \
            bash -c "'$img' check -f raw '$file'; test \$? -eq 63; qemu-img check -f raw '$file'; test \$? -eq 63"
    else
        check "qemu-made $variant: vrt-img check is clean" "$img" check -f "$fmt" "$file"
    fi
done

# --- we create, qemu verifies -----------------------------------------------------
check "vrt-img create vdi: qemu-img check clean" \
    bash -c "'$img' create -f vdi '$work/ours.vdi' 64M && qemu-img check -f vdi '$work/ours.vdi'"
check "vrt-img create vdi: qemu-img sees 64 MiB" \
    bash -c "qemu-img info -f vdi --output=json '$work/ours.vdi' | grep -q '\"virtual-size\": 67108864'"
check "vrt-img create vdi static: qemu-img check clean" \
    bash -c "'$img' create -f vdi -o static=on '$work/static.vdi' 8M && qemu-img check -f vdi '$work/static.vdi'"

qemu-img create -q -f raw "$work/source.raw" "$size"
qemu-io -f raw "$work/source.raw" <"$work/script1" >/dev/null
for target in vdi raw; do
    check "vrt-img convert raw -> $target: qemu-img compare identical" \
        bash -c "'$img' convert -f raw -O $target '$work/source.raw' '$work/conv.$target' &&
                 qemu-img compare -f raw -F $target '$work/source.raw' '$work/conv.$target'"
done
check "vrt-img convert raw -> vdi: qemu-img check clean" qemu_check_clean vdi "$work/conv.vdi"

# Sparse: a source with one MiB of data in 16 gives a VDI with one block allocated.
qemu-img create -q -f raw "$work/sparse.raw" 16M
qemu-io -f raw -c 'write -P 0x5a 5M 1M' "$work/sparse.raw" >/dev/null
check "vrt-img convert skips zeros: one block allocated" \
    bash -c "'$img' convert -f raw -O vdi '$work/sparse.raw' '$work/sparse.vdi' &&
             test \"\$(qemu-img map -f vdi --output=json '$work/sparse.vdi' | grep -c '\"data\": true')\" = 1"

# --- a convert stopped mid-copy never leaves a destination that looks finished -------
# The copy goes to a temporary name and is renamed into place after its final flush:
# killed at any moment (SIGKILL: no cleanup), DST is either absent or the whole copy.
qemu-img create -q -f raw "$work/big.raw" 384M
qemu-io -f raw -c 'write -P 0x3c 0 380M' "$work/big.raw" >/dev/null
killed_mid_copy=0
kill_convert() {
    local delay=$1 dst="$work/killed-$1.qcow2"
    "$img" convert -q -f raw -O qcow2 "$work/big.raw" "$dst" &
    local pid=$!
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ -e "$dst" ]; then
        echo "delay $delay: the destination exists: it must be the whole copy"
        qemu-img compare -q -f raw -F qcow2 "$work/big.raw" "$dst" || return 1
    else
        echo "delay $delay: no destination (killed mid-copy)"
        killed_mid_copy=$((killed_mid_copy + 1))
        ls -a "$work" | grep -q "^\.killed-$delay\.qcow2\.vrt-" || ls -a "$work"
    fi
    rm -f "$dst" "$work"/.killed-*
}
for delay in 0 0.05 0.2 0.5 1; do
    check "convert killed with SIGKILL after ${delay}s: no destination, or the whole copy" \
        kill_convert "$delay"
done
check "some of those kills struck mid-copy (the test saw the case it is for)" \
    test "$killed_mid_copy" -gt 0
check "convert stopped with SIGTERM mid-copy: neither the destination nor a temporary file" \
    bash -c "'$img' convert -q -f raw -O qcow2 '$work/big.raw' '$work/termed.qcow2' & pid=\$!;
             sleep 0.1; kill -TERM \$pid; wait \$pid; rc=\$?; echo exit \$rc;
             test \$rc -ne 0 && test ! -e '$work/termed.qcow2' &&
             ! ls -a '$work' | grep -q '^\.termed'"
check "convert: the finished copy is in place, no temporary file left" \
    bash -c "'$img' convert -q -f raw -O qcow2 '$work/big.raw' '$work/done.qcow2' &&
             qemu-img compare -q -f raw -F qcow2 '$work/big.raw' '$work/done.qcow2' &&
             ! ls -a '$work' | grep -q '^\.done'"
rm -f "$work/big.raw" "$work/done.qcow2"

# --- the same writes by qemu-io and by us ------------------------------------------
for fmt in vdi raw; do
    qemu-img create -q -f "$fmt" "$work/base.$fmt" "$size"
    qemu-io -f "$fmt" "$work/base.$fmt" <"$work/script1" >/dev/null
    for mode in sync async; do
        for seed in 2 3; do
            gen_script "$size" 120 "$seed" >"$work/script2"
            cp --sparse=always "$work/base.$fmt" "$work/theirs.$fmt"
            cp --sparse=always "$work/base.$fmt" "$work/ours.$fmt"
            qemu-io -f "$fmt" "$work/theirs.$fmt" <"$work/script2" >/dev/null
            args=("$fmt" "$work/ours.$fmt")
            [ "$mode" = async ] && args+=(--async)
            check "same writes ($fmt, $mode, seed $seed): qemu-img compare identical" \
                bash -c "'$vd_io' ${args[*]} <'$work/script2' &&
                         qemu-img compare -f $fmt -F $fmt '$work/theirs.$fmt' '$work/ours.$fmt'"
            [ "$fmt" = vdi ] &&
                check "same writes ($fmt, $mode, seed $seed): qemu-img check clean" \
                    qemu_check_clean vdi "$work/ours.$fmt"
        done
    done
done

# --- create as qemu-img does: sizes, rounding, replacing ---------------------------
for size in 1.5G 512b 1000 64k 0.5k 1T 1P; do
    rm -f "$work/size-ours.qcow2" "$work/size-qemu.qcow2"
    check "vrt-img create $size: the virtual size qemu-img gives it" \
        bash -c "'$img' create -q -f qcow2 '$work/size-ours.qcow2' $size &&
                 qemu-img create -q -f qcow2 '$work/size-qemu.qcow2' $size &&
                 test \"\$(qemu-img info --output=json '$work/size-ours.qcow2' | grep virtual-size)\" = \
                      \"\$(qemu-img info --output=json '$work/size-qemu.qcow2' | grep virtual-size)\""
done
for size in 1.5 1.5b 16E 1.2.3 1kk -1; do
    check "vrt-img create '$size': refused, as qemu-img refuses it" \
        bash -c "! '$img' create -q -f qcow2 '$work/size-bad.qcow2' '$size' 2>/dev/null &&
                 ! qemu-img create -q -f qcow2 '$work/size-bad2.qcow2' '$size' 2>/dev/null &&
                 test ! -e '$work/size-bad.qcow2'"
done
# Empty disks: qemu-img makes them (a QCOW2 without an L1 table) and converts them.
qemu-img create -q -f qcow2 "$work/empty-qemu.qcow2" 0
: >"$work/empty.raw"
check "a 0-byte qcow2 made by qemu-img: vrt-img check clean, info says 0 bytes" \
    bash -c "'$img' check '$work/empty-qemu.qcow2' &&
             '$img' info '$work/empty-qemu.qcow2' | grep -q '(0 bytes)'"
for fmt in raw vdi qcow2; do
    check "vrt-img create -f $fmt 0, and convert of a 0-byte raw to $fmt: qemu-img agrees" \
        bash -c "'$img' create -q -f $fmt '$work/empty-ours.$fmt' 0 &&
                 qemu-img info -f $fmt '$work/empty-ours.$fmt' | grep -q '(0 bytes)' &&
                 { [ $fmt = raw ] || qemu-img check -f $fmt '$work/empty-ours.$fmt'; } &&
                 '$img' convert -f raw -O $fmt '$work/empty.raw' '$work/empty-conv.$fmt' &&
                 qemu-img compare -f raw -F $fmt '$work/empty.raw' '$work/empty-conv.$fmt'"
done
old="$work/replace.qcow2"
"$img" create -q -f qcow2 "$old" 1M && chmod 640 "$old"
check "vrt-img create: an existing file is replaced, keeping its permissions" \
    bash -c "'$img' create -q -f qcow2 '$old' 3M &&
             qemu-img info '$old' | grep -q '(3145728 bytes)' && test \$(stat -c %a '$old') = 640 &&
             ! ls -a '$work' | grep -q vrt-"
cp "$old" "$work/replace.before"
check "vrt-img create: a failed create leaves the existing file as it was" \
    bash -c "! '$img' create -q -f qcow2 -o cluster_size=3 '$old' 1M 2>/dev/null &&
             cmp '$old' '$work/replace.before' && ! ls -a '$work' | grep -q vrt-"
check "vrt-img create: the new image's own backing file is not replaced" \
    bash -c "'$img' create -q -f qcow2 -b replace.qcow2 -F qcow2 '$old' 2>&1 | grep -q backing &&
             cmp '$old' '$work/replace.before'"
qemu-io -f qcow2 -c 'sleep 20000' "$old" >/dev/null 2>&1 &
holder=$!
# qemu-io takes its locks right after it opens the file: wait (bounded) for the open.
for _ in $(seq 100); do
    ls -l "/proc/$holder/fd" 2>/dev/null | grep -q replace.qcow2 && break
    sleep 0.1
done
sleep 0.5
check "vrt-img create: a file open in qemu-io (locked) is not replaced, and says why" \
    bash -c "'$img' create -q -f qcow2 '$old' 1M 2>&1 | grep -q lock; test \${PIPESTATUS[0]} -eq 1 &&
             cmp '$old' '$work/replace.before'"
check "vrt-img info beside qemu-io's writer: refused, naming the lock and -U" \
    bash -c "! '$img' info '$old' 2>'$work/lock.err' && grep -q '\"write\" lock' '$work/lock.err' &&
             grep -q -- -U '$work/lock.err'"
check "vrt-img -U beside qemu-io's writer: info, check, map, bench and convert read it" \
    bash -c "'$img' info -U '$old' >/dev/null && '$img' check -U '$old' >/dev/null &&
             '$img' map -U '$old' >/dev/null && '$img' bench -q -U -c 16 -t writeback '$old' >/dev/null &&
             '$img' convert -U -O raw '$old' '$work/lock.raw' &&
             '$img' compare -U -F raw '$old' '$work/lock.raw' >/dev/null"
check "vrt-img resize beside qemu-io's writer: refused, image unchanged" \
    bash -c "! '$img' resize -q -f qcow2 '$old' +1M 2>/dev/null && cmp '$old' '$work/replace.before'"
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
check "the lock is gone with qemu-io: vrt-img resize works" \
    "$img" resize -q -f qcow2 "$old" +1M

# --- option lists and messages as qemu-img has them -------------------------------
for list in '' ',,,' 'cluster_size=64k,' ',compat=1.1'; do
    check "vrt-img create -o '$list': refused, as qemu-img refuses it, and nothing written" \
        bash -c "! '$img' create -q -f qcow2 -o '$list' '$work/list.qcow2' 1M 2>/dev/null &&
                 ! qemu-img create -q -f qcow2 -o '$list' '$work/list2.qcow2' 1M 2>/dev/null &&
                 test ! -e '$work/list.qcow2'"
done
check "vrt-img create -o: ',,' is a comma inside a value, as in qemu-img" \
    bash -c "'$img' create -q -f qcow2 -o 'backing_file=a,,b.qcow2,backing_fmt=qcow2' '$work/comma.qcow2' 1M &&
             qemu-img info -U '$work/comma.qcow2' | grep -q '^backing file: a,b.qcow2'"
"$img" create -q -f qcow2 "$work/version.qcow2" 1M
printf '\x00\x00\x00\x07' | dd of="$work/version.qcow2" bs=1 seek=4 conv=notrunc status=none
check "vrt-img: an unsupported version is named first, the generic status words after" \
    bash -c "'$img' info '$work/version.qcow2' 2>&1 |
             grep -q \"cannot open '.*version.qcow2': QCOW2 version 7 is not supported.*\[not supported\""

check "vrt-img convert -p: qemu-img's progress lines, on stdout" \
    bash -c "'$img' convert -p -f raw -O raw '$work/source.raw' '$work/progress.raw' 2>'$work/progress.err' |
             tr '\r' '\n' | grep -q '^    (100.00/100%)\$' && ! grep -q '100%' '$work/progress.err'"

# convert's qemu-img options: cache modes, requests in flight, -W and -U.
qemu-img create -q -f qcow2 "$work/conv-opts.qcow2" 64M
qemu-io -f qcow2 -c 'write -P 7 1M 10M' -c 'write -P 9 40M 3M' "$work/conv-opts.qcow2" >/dev/null
cache=none
dd if=/dev/zero of="$work/direct-probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null ||
    cache=writeback # no O_DIRECT here: the uncached run becomes a cached one
rm -f "$work/direct-probe"
check "vrt-img convert -t $cache -T $cache -m 4 -W -U: identical to the source" \
    bash -c "'$img' convert -t $cache -T $cache -m 4 -W -U -f qcow2 -O qcow2 '$work/conv-opts.qcow2' '$work/conv-opts-1.qcow2' &&
             qemu-img compare '$work/conv-opts.qcow2' '$work/conv-opts-1.qcow2'"
check "vrt-img convert -t unsafe -m 1: identical to the source" \
    bash -c "'$img' convert -t unsafe -m 1 -f qcow2 -O raw '$work/conv-opts.qcow2' '$work/conv-opts-2.raw' &&
             qemu-img compare '$work/conv-opts.qcow2' '$work/conv-opts-2.raw'"
for bad in '-t bogus' '-T nocache' '-m 0' '-m 17'; do
    check "vrt-img convert $bad: refused, nothing written" \
        bash -c "! '$img' convert $bad -f qcow2 '$work/conv-opts.qcow2' '$work/conv-opts-bad.raw' 2>/dev/null &&
                 test ! -e '$work/conv-opts-bad.raw'"
done

# --- exit codes a script can rely on ----------------------------------------------
qemu-img create -q -f vdi "$work/leaky.vdi" 8M
qemu-io -f vdi -c 'write -P 1 0 3M' "$work/leaky.vdi" >/dev/null
# Raise the header's allocated count (offset 0x184) from 3 to 5: two leaked blocks.
printf '\x05' | dd of="$work/leaky.vdi" bs=1 seek=$((0x184)) conv=notrunc status=none
check "vrt-img check: leaks only exits 3" expect_exit 3 "$img" check -f vdi "$work/leaky.vdi"
check "vrt-img check -r leaks repairs, then exits 0" \
    bash -c "'$img' check -f vdi -r leaks '$work/leaky.vdi'; '$img' check -f vdi '$work/leaky.vdi' &&
             qemu-img check -f vdi '$work/leaky.vdi' &&
             qemu-io -f vdi -c 'read -P 1 0 3M' '$work/leaky.vdi' | grep -q 'read 3145728/3145728'"
cp "$work/leaky.vdi" "$work/corrupt.vdi"
# Point block map entry 1 at data block 0, which entry 0 uses too.
printf '\x00' | dd of="$work/corrupt.vdi" bs=1 seek=$((0x200 + 4)) conv=notrunc status=none
check "vrt-img check: corruption exits 2" expect_exit 2 "$img" check -f vdi "$work/corrupt.vdi"
check "vrt-img check: corruption is named" \
    bash -c "'$img' check -f vdi '$work/corrupt.vdi' 2>&1 | grep -q 'both point at data block 0'"

check "vrt-img compare: identical exits 0" \
    expect_exit 0 "$img" compare -f raw -F vdi "$work/source.raw" "$work/conv.vdi"
qemu-io -f vdi -c 'write -P 0x77 1234567 1' "$work/conv.vdi" >/dev/null
check "vrt-img compare: different exits 1 and names the offset" \
    bash -c "'$img' compare -f raw -F vdi '$work/source.raw' '$work/conv.vdi' | grep -q 1234567; test \${PIPESTATUS[0]} -eq 1"
check "vrt-img compare: missing file exits 2" \
    expect_exit 2 "$img" compare "$work/source.raw" "$work/no-such-file"

# --- resize: raw and VDI -----------------------------------------------------------
qemu-img create -q -f raw "$work/rs.raw" 8M
qemu-io -f raw -c 'write -P 0x5a 0 6M' "$work/rs.raw" >/dev/null
cp "$work/rs.raw" "$work/rs-qemu.raw"
qemu-img resize -q -f raw "$work/rs-qemu.raw" +3M
check "vrt-img resize raw +3M: identical to qemu-img's" \
    bash -c "'$img' resize -q -f raw '$work/rs.raw' +3M && cmp '$work/rs.raw' '$work/rs-qemu.raw'"
qemu-img resize -q -f raw --shrink "$work/rs-qemu.raw" 5M
check "vrt-img resize raw --shrink: refused past data, then --force matches qemu-img --shrink" \
    bash -c "! '$img' resize -q -f raw --shrink '$work/rs.raw' 5M 2>/dev/null &&
             [ \$(stat -c %s '$work/rs.raw') -eq $((11 * 1024 * 1024)) ] &&
             '$img' resize -q -f raw --shrink --force '$work/rs.raw' 5M &&
             cmp '$work/rs.raw' '$work/rs-qemu.raw'"
check "vrt-img resize raw --shrink of a hole past the data: needs no --force" \
    bash -c "'$img' resize -q -f raw '$work/rs.raw' 9M && '$img' resize -q -f raw --shrink '$work/rs.raw' 6M &&
             [ \$(stat -c %s '$work/rs.raw') -eq $((6 * 1024 * 1024)) ]"
# A VDI made by qemu-img: its block map fills one sector (room for 128 blocks).
qemu-img create -q -f vdi "$work/rs.vdi" 64M
qemu-io -f vdi -c 'write -P 0x33 63M 1M' "$work/rs.vdi" >/dev/null
cp "$work/rs.vdi" "$work/rs-before.vdi"
check "vrt-img resize vdi +36M: qemu-img check clean, contents kept, new range zeros" \
    bash -c "'$img' resize -f vdi '$work/rs.vdi' +36M | grep -q 'Image resized.' &&
             qemu-img check -q -f vdi '$work/rs.vdi' && qemu-img compare -q -f vdi -F vdi '$work/rs-before.vdi' '$work/rs.vdi' &&
             qemu-img info -f vdi '$work/rs.vdi' | grep -q '(104857600 bytes)'"
check "vrt-img resize vdi past its map's room: refused, says so, image unchanged" \
    bash -c "cp '$work/rs.vdi' '$work/rs-keep.vdi'; ! '$img' resize -f vdi '$work/rs.vdi' 200M 2>'$work/rs.err' &&
             grep -q 'room for 128 blocks' '$work/rs.err' && cmp '$work/rs.vdi' '$work/rs-keep.vdi'"
check "vrt-img resize vdi --shrink: refused (VDI cannot shrink), image unchanged" \
    bash -c "! '$img' resize -f vdi --shrink --force '$work/rs.vdi' 32M 2>'$work/rs.err' &&
             grep -q 'cannot shrink' '$work/rs.err' && cmp '$work/rs.vdi' '$work/rs-keep.vdi'"
"$img" create -q -f vdi -o static=on "$work/rs-static.vdi" 4M
check "vrt-img resize a static vdi: the new blocks are allocated, qemu-img check clean" \
    bash -c "'$img' resize -q -f vdi '$work/rs-static.vdi' 10M && qemu-img check -q -f vdi '$work/rs-static.vdi' &&
             '$img' info -f vdi --output=json '$work/rs-static.vdi' | grep -q '\"virtual-size\": 10485760' &&
             [ \$(stat -c %s '$work/rs-static.vdi') -ge $((10 * 1024 * 1024)) ] &&
             qemu-io -f vdi -c 'read -P 0 0 10M' '$work/rs-static.vdi' | grep -q 'read 10485760/10485760'"

summary
