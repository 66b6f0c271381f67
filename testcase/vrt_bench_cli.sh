#!/usr/bin/env bash
# vrt-bench's command line, as a user meets it:
#   - --help and --version answer with exit 0;
#   - every bad value is refused with exit 2 and a message that names the option;
#   - a short run exits 0 and reports the settings as given, in text and in JSON
#     (the keys doc/vrt-bench.md lists);
#   - SIGINT ends a run (which waits without a timeout by default) at once, with exit
#     130 and the measured part still reported.  That the handler's wakeup ends a wait
#     with nothing in flight is tst_aio_single_thread's to prove.
# Runs on the threads backend, which every build has, on a small buffered file.
set -u

. "$(dirname "$0")/checks.sh"

bench="${top_builddir:-.}/vrt-bench"
short=(--backend threads --filename "$work/data" --size 1m --direct 0 --runtime 0.3 --ramp 0)

# refused OPTION...: exit 2, and stderr names the first word of the arguments.
refused() {
    local name=${1%%=*}
    "$bench" "$@" >"$work/stdout" 2>"$work/stderr"
    local got=$?
    cat "$work/stderr"
    [ "$got" -eq 2 ] && grep -q -- "$name" "$work/stderr" && [ ! -s "$work/stdout" ]
}

# contains FILE TEXT: FILE has TEXT (fixed string).
contains() {
    grep -qF -- "$2" "$1" || { echo "no '$2' in:"; cat "$1"; false; }
}

check "--help answers and names the wait options" \
    bash -c "'$bench' --help | grep -q -- --single-thread && '$bench' --help | grep -q -- --wait-timeout"
check "--version answers" bash -c "'$bench' --version | grep -q '^vrt-bench (vrt) '"

for bad in --single-thread=2 --single-thread=yes --wait-timeout=0 --wait-timeout=abc \
    --wait-timeout=3600001 --fixedbufs=yes --direct=2 --iodepth=0 --iodepth=65537 \
    --batch=0 --rw=sideways --rwmixread=101 --bs=0 --size=-1 --runtime=0 \
    --backend=nosuch --nosuch; do
    check "refuses $bad" refused "$bad"
done
check "refuses --batch above --iodepth" refused --batch=9 --iodepth=8

# A short run with the wait options changed: the text report says so.
"$bench" "${short[@]}" --single-thread 0 --wait-timeout 50 >"$work/text" 2>&1
status=$?
check "a short run exits 0" test "$status" -eq 0
check "the report shows single-thread=0" contains "$work/text" "single-thread=0"
check "the report shows the wait bound" contains "$work/text" "at most 50 ms each"
check "the report has results" contains "$work/text" "results over"

# The defaults, in JSON.
"$bench" "${short[@]}" --json >"$work/json" 2>"$work/json.err"
status=$?
check "--json exits 0" test "$status" -eq 0
check "--json prints one object and nothing else on stdout" \
    bash -c "[ \$(head -c1 '$work/json') = '{' ] && [ \$(tail -c2 '$work/json' | head -c1) = '}' ]"
for key in '"single_thread": true' '"wait_timeout_ms": null' '"fixedbufs": true' \
    '"backend": "threads"' '"iodepth": 32' '"reqs_per_submit"' '"us_per_io"' '"p99.99"'; do
    check "--json has $key" contains "$work/json" "$key"
done
"$bench" "${short[@]}" --json --single-thread 0 --wait-timeout 7 >"$work/json2" 2>/dev/null
check "--json reports --single-thread 0" contains "$work/json2" '"single_thread": false'
check "--json reports --wait-timeout 7" contains "$work/json2" '"wait_timeout_ms": 7'

# SIGINT against a run that waits without a timeout: it must end at once.
sigint_ends_run() {
    local start end status
    "$bench" --backend threads --filename "$work/data" --size 1m --direct 0 --iodepth 1 \
        --runtime 60 --ramp 0 --quiet >"$work/sigint" 2>&1 &
    local pid=$!
    sleep 1
    start=$(date +%s)
    kill -INT "$pid"
    wait "$pid"
    status=$?
    end=$(date +%s)
    cat "$work/sigint"
    echo "exit $status after $((end - start)) s"
    [ "$status" -eq 130 ] && [ $((end - start)) -le 5 ] && grep -q "results over" "$work/sigint"
}
check "SIGINT ends a run at once (exit 130, report kept)" sigint_ends_run

summary
