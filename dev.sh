#!/usr/bin/env bash
# The two commands of the README:
#   ./dev.sh run    install what is missing, build, run vrt-bench with its defaults
#   ./dev.sh test   install what is missing, build and run every test program in four
#                   configurations (plain -Werror, ASan+UBSan, TSan, and portable: no
#                   Linux backends, pipe doorbell), check the 32-bit kernel ABI layout,
#                   run 'make distcheck', and print one line
#                   "N passed, N failed, N skipped" totalled over every test program.
# Build trees go to build/, build-asan/, build-tsan/, build-portable/ (ignored by git).  Extra arguments
# after 'run' go to vrt-bench (./dev.sh run --backend threads --runtime 5).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
jobs=$(nproc 2>/dev/null || echo 2)

# Debian packages the build, the tests and the benchmarks need.
packages=(gcc make autoconf automake libtool pkg-config libcunit1-dev liburing-dev zlib1g-dev qemu-utils
          gcc-multilib fio)

install_missing() {
    local missing=()
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

bootstrap() {
    [ -x configure ] && [ configure -nt configure.ac ] && [ Makefile.in -nt Makefile.am ] && return 0
    echo "==> autoreconf"
    autoreconf -fi >/dev/null
}

# build DIR CONFIGURE-ARGS...: configure (once) and build in DIR.
build() {
    local dir=$1
    shift
    mkdir -p "$dir"
    if [ ! -f "$dir/Makefile" ]; then
        echo "==> configure $* (in $dir)"
        (cd "$dir" && "$here/configure" -q "$@")
    fi
    echo "==> build ($dir)"
    make -C "$dir" -s -j"$jobs" all >/dev/null
}

# check DIR: run the test programs; never stops the script, the totals tell.
check() {
    local dir=$1
    echo "==> make check ($dir)"
    make -C "$dir" -s -j"$jobs" check >"$dir/check.out" 2>&1 || true
    grep -E '^(PASS|FAIL|SKIP|XFAIL|XPASS|ERROR):' "$dir/check.out" || true
}

# Totals over every test program of the given build trees.  A CUnit program
# contributes its test counts from its log (a script that runs several contributes
# all their summaries); a program that crashed before CUnit's summary, or a plain
# script, counts as one test; a skipped program (exit 77) counts as skipped.
totals() {
    local passed=0 failed=0 skipped=0
    for dir in "$@"; do
        for trs in "$dir"/testcase/*.trs; do
            [ -f "$trs" ] || continue
            local log=${trs%.trs}.log
            local result
            result=$(sed -n 's/^:test-result: //p' "$trs" | head -n 1)
            local row
            # "passed failed" summed over every CUnit summary in the log, or nothing.
            row=$(awk '$1 == "tests" && $2 ~ /^[0-9]+$/ { p += $4; f += $5; n++ }
                END { if (n) print p, f }' "$log" 2>/dev/null || true)
            case "$result" in
            SKIP) skipped=$((skipped + 1)) ;;
            PASS | FAIL | ERROR | XFAIL | XPASS)
                if [ -n "$row" ]; then
                    local row_passed row_failed
                    read -r row_passed row_failed <<<"$row"
                    passed=$((passed + row_passed))
                    failed=$((failed + row_failed))
                    # A program that failed outside its tests (a crash after the
                    # summary, a sanitizer report at exit) still fails.
                    if [ "$result" != PASS ] && [ "$row_failed" -eq 0 ]; then
                        failed=$((failed + 1))
                    fi
                elif [ "$result" = PASS ]; then
                    passed=$((passed + 1))
                else
                    failed=$((failed + 1))
                fi
                ;;
            esac
        done
    done
    echo "$passed passed, $failed failed, $skipped skipped"
    [ "$failed" -eq 0 ]
}

cmd_run() {
    install_missing
    bootstrap
    build build --enable-werror
    echo "==> vrt-bench $*"
    ./build/vrt-bench "$@"
}

cmd_test() {
    install_missing
    bootstrap
    build build --enable-werror
    # The plain build also runs the 4 GiB transfer test (too slow for the others).
    TST_HUGE=1 check build
    build build-asan --enable-werror --enable-asan --enable-ubsan
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 check build-asan
    build build-tsan --enable-werror --enable-tsan
    # TSan cannot map its shadow memory with the address randomization of recent
    # kernels; running without ASLR is the documented workaround.
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 setarch "$(uname -m)" -R \
        make -C build-tsan -s -j"$jobs" check >build-tsan/check.out 2>&1 || true
    echo "==> make check (build-tsan)"
    grep -E '^(PASS|FAIL|SKIP|XFAIL|XPASS|ERROR):' build-tsan/check.out || true
    # The portable configuration: no kernel AIO, no io_uring, the pipe doorbell: what a
    # non-Linux POSIX host builds.
    build build-portable --enable-werror --disable-linux-aio --disable-io-uring --disable-eventfd
    check build-portable
    echo "==> make distcheck"
    local distcheck=ok
    make -C build -s -j"$jobs" distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror >build/distcheck.out 2>&1 ||
        distcheck=failed
    echo "distcheck: $distcheck"
    local status=0
    if [ "$distcheck" != ok ]; then
        tail -n 30 build/distcheck.out
        status=1
    fi
    # Last, so CI's closing line is always the totals.
    totals build build-asan build-tsan build-portable || status=1
    return $status
}

case "${1:-}" in
run) shift; cmd_run "$@" ;;
test) cmd_test ;;
*)
    echo "usage: $0 run [vrt-bench options] | test" >&2
    exit 2
    ;;
esac
