# shellcheck shell=bash
# Shared by the bench scripts (sourced): medians and publishing a report.

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# publish REPORT OUT: prints the report and copies it to OUT (unless OUT is "-").
publish() {
    cat "$1"
    if [ "$2" != - ]; then
        mkdir -p "$(dirname "$2")"
        cp "$1" "$2"
        echo "==> written to $2" >&2
    fi
}
