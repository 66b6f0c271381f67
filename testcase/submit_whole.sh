#!/bin/sh
# Runs the kernel backends' suites with every submit in one system call
# (RT_AIO_SUBMIT=whole), the design scripts/bench-knobs.sh keeps as the same-run
# comparison for starting an idle device early (src/internal/early_start.h): both must
# keep every rule.  Each suite skips itself (77) where its backend is unavailable.
: "${top_builddir:=.}"
ran=0
for suite in tst_fileaio_linux_aio tst_fileaio_io_uring tst_uring; do
    program="$top_builddir/testcase/$suite"
    [ -x "$program" ] || continue
    RT_AIO_SUBMIT=whole "$program"
    rc=$?
    case $rc in
    0) ran=$((ran + 1)) ;;
    77) ;;
    *) exit "$rc" ;;
    esac
done
if [ "$ran" -eq 0 ]; then
    echo "SKIP: no kernel AIO backend is built or available here"
    exit 77
fi
