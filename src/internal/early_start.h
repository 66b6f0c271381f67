/*
 * Starting an idle device early: how the kernel backends cut a submit.
 *
 * Linux plugs a submit of three or more requests (io_submit() and io_uring_enter()
 * alike) and hands them to the driver together when the system call ends; on a virtio
 * disk that is one notification of the host, after the last request.  When fewer
 * requests are in flight than a submit adds, the device is idle or about to be (at
 * depth 32 it completes whole batches, so each resubmit finds it idle).  Then the
 * backend hands the kernel the first request alone, which it dispatches at once, then
 * the next RT__EARLY_START_CHUNK, then the rest: the device works on the first while
 * the others follow.  That costs two more system calls for such a submit only; a busy
 * device gets the whole submit in one.  Measured in doc/design.md ("Starting an idle
 * device early").
 *
 * RT_AIO_SUBMIT=whole in the environment, read when a context is created, turns this
 * off: every submit in one system call, for the same-run comparison in
 * scripts/bench-knobs.sh.
 */
#ifndef RT_INTERNAL_EARLY_START_H
#define RT_INTERNAL_EARLY_START_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Requests in the second system call of an early-starting submit. */
#define RT__EARLY_START_CHUNK 8u

/* Whether the environment leaves early starts on (see the head comment). */
static inline bool rt__early_start_allowed(void)
{
    const char *submit = getenv("RT_AIO_SUBMIT");
    return submit == NULL || strcmp(submit, "whole") != 0;
}

/* Whether a submit of @a n requests starts the device early, with @a in_flight
 * requests already in the kernel.  Two or fewer are not plugged anyway. */
static inline bool rt__early_start_wanted(bool allowed, uint32_t in_flight, size_t n)
{
    return allowed && n > 2 && in_flight < n;
}

/* How many requests of an early-starting submit go into its next system call, @a sent
 * of them handed over already and @a left still to go: up to the first, then up to the
 * (1 + RT__EARLY_START_CHUNK)th, then all that are left.  Partial submits are fine:
 * the cuts stay where they are. */
static inline size_t rt__early_start_part(size_t sent, size_t left)
{
    size_t cut = sent < 1                           ? 1
                 : sent < 1 + RT__EARLY_START_CHUNK ? 1 + RT__EARLY_START_CHUNK
                                                    : sent + left;
    return cut - sent < left ? cut - sent : left;
}

#endif /* RT_INTERNAL_EARLY_START_H */
