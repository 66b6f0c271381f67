#!/bin/sh
# Runs the file-AIO suite on the threads backend with the thread pool's lock-free ring
# switched off (RT_AIO_POOL_QUEUE=locked), the mutex-queue design `make bench` keeps as
# the ring's same-run comparison: both queues must keep every rule of the contract.
: "${top_builddir:=.}"
RT_AIO_POOL_QUEUE=locked exec "$top_builddir/testcase/tst_fileaio_threads"
