#!/usr/bin/env bash
# System calls per I/O of a vrt-bench run, by call: where a backend's time goes.
# strace slows the run down, so read the ratios (calls per I/O), not the IOPS.
#
#   scripts/syscalls.sh [vrt-bench options]      (from a build directory)
#   e.g. scripts/syscalls.sh --backend threads --iodepth 32 --runtime 2
#
# Installs strace if missing.  Uses a temporary 256 MiB file unless --filename is given.
set -euo pipefail
bench=${VRT_BENCH:-./vrt-bench}
[ -x "$bench" ] || { echo "syscalls.sh: no $bench here: run it from a build directory" >&2; exit 1; }
if ! command -v strace >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq strace >/dev/null
fi
trace=$(mktemp)
trap 'rm -f "$trace"' EXIT
ios=$(strace -f -c -o "$trace" "$bench" --ramp 0 --quiet --json "$@" | grep -o '"ios": *[0-9]*' | head -n 1 | grep -o '[0-9]*$')
echo "I/Os: $ios"
awk -v ios="$ios" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
    printf "  %-18s %9d calls  %6.3f per I/O\n", $NF, $4, $4 / ios }' "$trace" | sort -k2 -n -r | head -n 12
