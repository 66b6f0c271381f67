#!/bin/sh
# Runs the io_uring suites with every submit in one io_uring_enter()
# (RT_AIO_URING_SUBMIT=whole), the design scripts/bench-knobs.sh keeps as the same-run
# comparison for starting an idle device early: both must keep every rule.
: "${top_builddir:=.}"
RT_AIO_URING_SUBMIT=whole "$top_builddir/testcase/tst_fileaio_io_uring" || exit $?
RT_AIO_URING_SUBMIT=whole exec "$top_builddir/testcase/tst_uring"
