#!/usr/bin/env bash
# make fuzz: libFuzzer on each image driver's open/read/check path.
#
#   scripts/fuzz.sh [DRIVER...]        drivers: those with a fuzz/fuzz_DRIVER.c (default: all)
#
# Builds the library with clang -fsanitize=fuzzer-no-link,address,undefined in its own
# out-of-tree directory, links one harness per driver (fuzz/fuzz_DRIVER.c) with
# -fsanitize=fuzzer, writes a seed corpus made by the library itself (fuzz/gen_seeds.c),
# and runs each fuzzer for FUZZ_SECONDS.  Inputs that grow coverage are kept in
# BUILD/corpus-DRIVER across runs; a crash leaves its input in BUILD/artifacts-DRIVER/
# and makes the script exit 1.  Exits 77 when clang or libFuzzer is missing.
#
# Environment:
#   FUZZ_SECONDS   seconds per driver (default 60)
#   FUZZ_BUILD     build directory (default SRCDIR/build-fuzz, which git ignores)
#   FUZZ_CC        the compiler (default clang)
#   FUZZ_ARGS      extra libFuzzer flags, e.g. "-jobs=2 -workers=2"
#   FUZZ_RECORD    where the run's table goes (default SRCDIR/doc/fuzz.md): per
#                  harness, seconds, executions, corpus, coverage and findings, with the
#                  command and machine; "none" writes nothing
#   FUZZ_NO_WRITE  set: skip each harness's writable pass (read-only opens only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD:-$here/build-fuzz}
cc=${FUZZ_CC:-clang}
drivers=${*:-$(cd "$here/fuzz" && ls fuzz_*.c | sed 's/^fuzz_//; s/\.c$//' | tr '\n' ' ')}
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
cflags="-g -O1 -fno-omit-frame-pointer $san"
warn="-std=gnu11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wno-unused-parameter -Werror"

skip() {
    echo "SKIP: $*" >&2
    exit 77
}

command -v "$cc" >/dev/null 2>&1 || skip "no '$cc' on PATH (libFuzzer needs clang; set FUZZ_CC)"
mkdir -p "$build"
probe="$build/probe_fuzzer"
printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' \
    >"$probe.c"
"$cc" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" >"$probe.log" 2>&1 ||
    skip "'$cc' cannot link -fsanitize=fuzzer,address,undefined (libFuzzer missing?): $(head -n 3 "$probe.log")"
rm -f "$probe" "$probe.c" "$probe.log"

# The library, instrumented for coverage.  Out of tree: the source tree must not be
# configured itself, or automake refuses a second build directory.
if [ -e "$here/config.status" ]; then
    echo "error: $here is configured in place; run 'make distclean' there first" >&2
    exit 1
fi
lib="$build/lib"
mkdir -p "$lib"
if [ ! -e "$lib/config.status" ]; then
    echo "configuring the library in $lib"
    (cd "$lib" && "$here/configure" -q CC="$cc" \
        CFLAGS="$cflags -fsanitize=fuzzer-no-link") >"$build/configure.log" 2>&1 || {
        tail -n 20 "$build/configure.log" >&2
        echo "error: configure failed (log: $build/configure.log)" >&2
        exit 1
    }
fi
make -s -C "$lib" -j"$(nproc 2>/dev/null || echo 2)" libvrt_core.la >"$build/make.log" 2>&1 || {
    tail -n 30 "$build/make.log" >&2
    echo "error: building the library failed (log: $build/make.log)" >&2
    exit 1
}
# What the library links against (liburing, zlib, ...), as libtool recorded it.
libs="$lib/.libs/libvrt_core.a $(sed -n "s/^dependency_libs='\\(.*\\)'/\\1/p" "$lib/libvrt_core.la") $(sed -n 's/^LIBS = //p' "$lib/Makefile") -lpthread"
incs="-I$here/include -I$here/src -I$lib -I$lib/src"

# shellcheck disable=SC2086 # $cflags, $incs, $libs are word lists
"$cc" $cflags $warn -fsanitize=fuzzer-no-link $incs "$here/fuzz/gen_seeds.c" $libs -o "$build/gen_seeds"

record=${FUZZ_RECORD:-$here/doc/fuzz.md}
rows=()
status=0
for d in $drivers; do
    src="$here/fuzz/fuzz_$d.c"
    [ -e "$src" ] || { echo "error: no harness $src" >&2; exit 1; }
    # shellcheck disable=SC2086
    "$cc" $cflags $warn -fsanitize=fuzzer $incs "$src" $libs -o "$build/fuzz_$d"

    seeds="$build/seeds-$d"
    corpus="$build/corpus-$d"
    artifacts="$build/artifacts-$d"
    rm -rf "$seeds"
    mkdir -p "$seeds" "$corpus" "$artifacts"
    "$build/gen_seeds" "$d" "$seeds"
    dict=()
    [ -e "$here/fuzz/$d.dict" ] && dict=(-dict="$here/fuzz/$d.dict")

    echo "fuzzing $d for ${seconds}s (log: $build/fuzz-$d.log)"
    rc=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a word list
    # -error_exitcode: libFuzzer's default (77) would read as "skipped" to automake.
    "$build/fuzz_$d" -max_len=65536 -max_total_time="$seconds" -timeout=30 \
        -error_exitcode=1 -timeout_exitcode=1 \
        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/" \
        "${dict[@]}" ${FUZZ_ARGS:-} "$corpus" "$seeds" >"$build/fuzz-$d.log" 2>&1 || rc=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' \
        "$build/fuzz-$d.log" || true
    inputs=$(find "$corpus" -type f | wc -l)
    cov=$(grep -oE 'cov: [0-9]+' "$build/fuzz-$d.log" | tail -n 1 | sed 's/cov: //')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/fuzz-$d.log" | tail -n 1)
    findings=$(find "$artifacts" -type f | wc -l)
    echo "$d: corpus $inputs inputs, coverage ${cov:-?}, $execs executions, $findings findings"
    rows+=("| $d | $seconds | ${execs:-?} | $inputs | ${cov:-?} | $findings |")
    if [ "$rc" -ne 0 ]; then
        echo "$d: FOUND A PROBLEM (exit $rc); input(s) in $artifacts:" >&2
        ls -l "$artifacts" >&2
        grep -E -A 25 '^==[0-9]+==ERROR|runtime error|^(writable pass|raw|info|block_status)' \
            "$build/fuzz-$d.log" | head -n 60 >&2 || true
        status=1
    fi
done
if [ "$record" != none ]; then
    {
        echo "# make fuzz: the last recorded run"
        echo
        echo "Command: \`FUZZ_SECONDS=$seconds make fuzz\` (scripts/fuzz.sh), $(date -u '+%Y-%m-%d %H:%M UTC')."
        echo "Machine: $(nproc) CPUs, $(uname -sr), $("$cc" --version | head -n 1)."
        echo "Each harness opens every input read-only (named and probed) and reads it every"
        echo "way a reader can, then opens it writable, writes, flushes, checks, repairs and"
        echo "reopens it (fuzz/fuzz_common.h)${FUZZ_NO_WRITE:+ -- this run without the writable pass}."
        echo "A finding is an input that crashed, tripped ASan/UBSan, or broke an oracle;"
        echo "it is kept in build-fuzz/artifacts-DRIVER/."
        echo
        echo "| harness | seconds | executions | corpus inputs | coverage (edges) | findings |"
        echo "|---|---:|---:|---:|---:|---:|"
        printf '%s\n' "${rows[@]}"
    } >"$record"
    echo "recorded in $record"
fi
exit $status
