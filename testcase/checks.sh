# Check helpers for the shell test scripts; sourced, not run.  Sets work (a scratch
# directory removed at exit) and provides check/expect_exit/summary: each check is one
# test in the CUnit-style summary row that the test totals read.

work=$(mktemp -d "${TMPDIR:-/var/tmp}/vrt-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# check NAME COMMAND...: runs one check; its output is shown only when it fails.
check() {
    local name=$1
    shift
    if "$@" >"$work/out" 2>&1; then
        passed=$((passed + 1))
        echo "  ok    $name"
    else
        failed=$((failed + 1))
        echo "  FAIL  $name"
        tail -n 20 "$work/out" | sed 's/^/        /'
    fi
}

# expect_exit STATUS COMMAND...: true when COMMAND exits with STATUS.
expect_exit() {
    local want=$1
    shift
    "$@"
    local got=$?
    echo "exit $got, expected $want"
    [ "$got" -eq "$want" ]
}

# The CUnit-style summary row the test totals read; the script's exit status.
summary() {
    echo
    echo "Run Summary:    Type  Total    Ran Passed Failed Inactive"
    printf '               tests %6d %6d %6d %6d %8d\n' $((passed + failed)) $((passed + failed)) \
        "$passed" "$failed" 0
    [ "$failed" -eq 0 ]
}
