#!/usr/bin/env bash
# vrt-img as a drop-in for qemu-img: one script of invocations run with each tool, on
# copies of the same fixtures, comparing exit statuses, the keys of JSON output, and
# text output where vrt-img promises qemu-img's lines.  Where vrt-img differs by
# design, the line says so and what each must do (doc/vrt-img.md lists why).
# Exits 77 when qemu-utils is not installed.
set -u

. "$(dirname "$0")/qemu_common.sh"

# Fixtures, made once; each tool works on its own copy.
mkdir -p "$work/fix"
(
    cd "$work/fix" || exit 1
    qemu-img create -q -f qcow2 a.qcow2 16M
    qemu-io -f qcow2 -c 'write -P 0x11 0 3M' -c 'write -z 4M 64k' -c 'write -c -P 0x22 8M 64k' \
        a.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c 'write -P 0x33 1M 128k' top.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top2.qcow2
    qemu-io -f qcow2 -c 'write -P 0x44 2M 64k' top2.qcow2 >/dev/null
    qemu-img create -q -f raw r.raw 4M
    qemu-io -f raw -c 'write -P 0x55 0 1M' r.raw >/dev/null
    qemu-img create -q -f qcow2 other.qcow2 16M
) || { echo "cannot make the fixtures"; exit 1; }
rm -rf "$work/qemu" "$work/vrt"
cp -r "$work/fix" "$work/qemu"
cp -r "$work/fix" "$work/vrt"
vrt_img=$(cd "$(dirname "$img")" && pwd)/$(basename "$img")

# Runs "ARGS..." with one tool in its directory: prints the exit status, stdout in
# $work/<tool>.out.
run_one() {
    local tool=$1
    shift
    local bin=qemu-img
    [ "$tool" = vrt ] && bin=$vrt_img
    (cd "$work/$tool" && "$bin" "$@" >"$work/$tool.out" 2>"$work/$tool.err" </dev/null)
    echo $?
}

# The JSON keys of a file, sorted, one per line.
json_keys() { grep -o '"[a-z-]*":' "$1" | sort -u; }

# same ARGS...: both tools exit alike (and, for --output=json, print the same keys).
same() {
    local q v
    q=$(run_one qemu "$@")
    v=$(run_one vrt "$@")
    if [ "$q" != "$v" ]; then
        echo "exit: qemu-img $q, vrt-img $v"
        sed 's/^/  vrt-img: /' "$work/vrt.err"
        return 1
    fi
    case " $* " in
    *" --output=json "*)
        # Every key qemu-img prints; vrt-img may add its own (allocated-blocks, ...).
        local missing
        missing=$(comm -23 <(json_keys "$work/qemu.out") <(json_keys "$work/vrt.out"))
        if [ -n "$missing" ]; then
            echo "JSON keys qemu-img prints and vrt-img does not: $missing"
            return 1
        fi ;;
    esac
    return 0
}

# same_write QEMU_ARGS... -- VRT_ARGS...: both exit alike, where vrt-img is given the
# format qemu-img's command has no option for (a writable open never probes).
same_write() {
    local qargs=() q v
    while [ "$1" != -- ]; do
        qargs+=("$1")
        shift
    done
    shift
    q=$(run_one qemu "${qargs[@]}")
    v=$(run_one vrt "$@")
    [ "$q" = "$v" ] || {
        echo "exit: qemu-img $q, vrt-img $v"
        sed 's/^/  vrt-img: /' "$work/vrt.err"
        return 1
    }
}

# same_text ARGS...: as same, and stdout is the same (vrt-img's own extra lines of
# allocated and total blocks left out).
same_text() {
    same "$@" || return 1
    diff <(cat "$work/qemu.out") <(grep -v 'blocks: ' "$work/vrt.out")
}

# same_list ARGS...: as same_text, with the dates left out (each tool took its own
# snapshot, a second apart perhaps).
same_list() {
    same "$@" || return 1
    local undate='s/[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}/DATE/'
    diff <(sed -E "$undate" "$work/qemu.out") <(sed -E "$undate" "$work/vrt.out")
}

# differs Q V ARGS...: by design, qemu-img exits Q and vrt-img V.
differs() {
    local want_q=$1 want_v=$2 q v
    shift 2
    q=$(run_one qemu "$@")
    v=$(run_one vrt "$@")
    echo "exit: qemu-img $q (expected $want_q), vrt-img $v (expected $want_v)"
    [ "$q" = "$want_q" ] && [ "$v" = "$want_v" ]
}

# Inspecting.
check "info -f qcow2 a.qcow2 (text)" same_text info -f qcow2 a.qcow2
check "info --output=json" same info -f qcow2 --output=json a.qcow2
check "info of an overlay without -f (names the backing file, does not open it)" \
    same_text info top.qcow2
check "info --backing-chain -f qcow2 (text)" same_text info -f qcow2 --backing-chain top.qcow2
check "info of a missing file" same info missing.qcow2
check "check -f qcow2 (text)" same_text check -f qcow2 a.qcow2
check "check --output=json" same check -f qcow2 --output=json a.qcow2
check "check of a raw image: exit 63" same check -f raw r.raw
check "map --output=json" same map -f qcow2 --output=json a.qcow2
check "compare of identical images: exit 0" same compare -f qcow2 -F qcow2 a.qcow2 a.qcow2
check "compare of different images: exit 1" same compare -f qcow2 -F qcow2 a.qcow2 other.qcow2
check "compare -s of different images: exit 1" same compare -s -f qcow2 -F qcow2 a.qcow2 other.qcow2
check "compare with a missing file" same compare a.qcow2 missing.qcow2

# Measuring: the same numbers.
check "measure --size 1G -O qcow2 (text)" same_text measure --size 1G -O qcow2
check "measure -O qcow2 of an image (text)" same_text measure -f qcow2 -O qcow2 a.qcow2
check "measure -O qcow2 of an overlay (its chain's data)" same_text measure -f qcow2 -O qcow2 top.qcow2
check "measure with 512-byte clusters, 1-bit refcounts (text)" \
    same_text measure -O qcow2 -o cluster_size=512,refcount_bits=1 -f raw r.raw
check "measure -o preallocation=full (text)" same_text measure -O qcow2 -o preallocation=full a.qcow2
check "measure -O raw (text)" same_text measure -O raw a.qcow2
check "measure --output=json" same measure --output=json -f qcow2 -O qcow2 a.qcow2
check "measure -O vdi (refused, as qemu-img refuses)" same measure -O vdi a.qcow2
check "measure with both --size and FILE (refused)" same measure --size 1M -O qcow2 a.qcow2

# Creating and changing.
check "create -f qcow2 NEW 1.5G" same create -q -f qcow2 new.qcow2 1.5G
check "create -f qcow2 -o compat=0.10" same create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
check "create -o '' (refused)" same create -q -f qcow2 -o '' bad.qcow2 1M
check "create -o nonsense=1 (refused)" same create -q -f qcow2 -o nonsense=1 bad.qcow2 1M
check "create with a bad size (refused)" same create -q -f qcow2 bad.qcow2 12X
check "create -b with -F" same create -q -f qcow2 -b a.qcow2 -F qcow2 o.qcow2
check "resize +1M" same resize -q -f qcow2 new.qcow2 +1M
check "resize smaller without --shrink (refused)" same resize -q -f qcow2 new.qcow2 1M
# qemu-img snapshot has no -f; vrt-img's writing actions need it.
check "snapshot -c" same_write snapshot -q -c s1 other.qcow2 -- snapshot -q -f qcow2 -c s1 other.qcow2
check "snapshot -l (text)" same_list snapshot -l other.qcow2
check "snapshot -l of a raw image: none, exit 0" same_text snapshot -l r.raw
check "snapshot -a s1" same_write snapshot -q -a s1 other.qcow2 -- snapshot -q -f qcow2 -a s1 other.qcow2
check "snapshot -a of an unknown snapshot (refused)" \
    same_write snapshot -q -a nope other.qcow2 -- snapshot -q -f qcow2 -a nope other.qcow2
check "snapshot -d s1" same_write snapshot -q -d s1 other.qcow2 -- snapshot -q -f qcow2 -d s1 other.qcow2
check "snapshot -d of an unknown snapshot (refused)" \
    same_write snapshot -q -d nope other.qcow2 -- snapshot -q -f qcow2 -d nope other.qcow2
check "rebase -u" same rebase -q -f qcow2 -u -b a.qcow2 -F qcow2 top2.qcow2
check "rebase onto none" same rebase -q -f qcow2 -b '' top2.qcow2
check "rebase without -b (refused)" same rebase -q -f qcow2 top.qcow2
check "commit" same commit -q -f qcow2 top.qcow2
check "commit of an image without a backing file (refused)" same commit -q -f qcow2 a.qcow2
check "convert -O qcow2" same convert -q -f qcow2 -O qcow2 a.qcow2 c.qcow2
check "convert -n into an existing image" same convert -q -n -f qcow2 -O qcow2 a.qcow2 other.qcow2
check "convert --target-is-zero without -n (refused)" \
    same convert -q --target-is-zero -O qcow2 a.qcow2 tz.qcow2
check "convert -O nonsense (refused)" same convert -q -O nonsense a.qcow2 x.img
check "the images both tools changed compare identical" \
    bash -c "for f in new.qcow2 top.qcow2 a.qcow2 top2.qcow2 c.qcow2 other.qcow2; do
                 qemu-img compare -q '$work/qemu/'\$f '$work/vrt/'\$f || { echo \$f; exit 1; }; done"

# Usage.
check "an unknown command" same nonsense
check "an unknown option" same info --nonsense a.qcow2

# By design.
check "convert onto an existing file: qemu-img overwrites it, vrt-img refuses" \
    differs 0 1 convert -q -f qcow2 -O qcow2 a.qcow2 c.qcow2
check "compare with bad usage: qemu-img exits 1, vrt-img 2 (1 means different)" \
    differs 1 2 compare a.qcow2
check "info --backing-chain without -f: vrt-img refuses to follow names unasked" \
    differs 0 1 info --backing-chain top2.qcow2
check "resize without -f: vrt-img never probes a writable open" \
    differs 0 1 resize -q new.qcow2 +1M
check "snapshot -c without -f (qemu-img has no -f): vrt-img never probes a writable open" \
    differs 0 1 snapshot -q -c s2 other.qcow2

summary
