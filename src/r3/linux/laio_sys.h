/*
 * The kernel AIO system calls, each wrapped once around syscall(__NR_...) and
 * returning the result or a negative errno (never touching errno's meaning for the
 * caller).  Reached through a table so tests can inject faults; see
 * internal/posix_sys.h for the rules.
 */
#ifndef RT_LAIO_SYS_H
#define RT_LAIO_SYS_H

#include "r3/linux/laio_abi.h"

struct rt__laio_sys {
    long (*io_setup)(unsigned nr_events, laio_context_t *ctx);
    long (*io_destroy)(laio_context_t ctx);
    long (*io_submit)(laio_context_t ctx, long n, struct laio_iocb **iocbs);
    long (*io_cancel)(laio_context_t ctx, struct laio_iocb *iocb, struct laio_event *result);
    long (*io_getevents)(laio_context_t ctx, long min_nr, long nr, struct laio_event *events,
                         struct laio_timespec *timeout);
};

extern struct rt__laio_sys rt__laio_sys;

/** Puts every member back to the real system call. */
void rt__laio_sys_reset(void);

/** True while io_getevents is the real call: only then may the backend read the
 *  completion ring directly, since a fake io_getevents must see every reap. */
int rt__laio_sys_getevents_is_real(void);

#endif /* RT_LAIO_SYS_H */
