/*
 * The doorbell a context's waiter sleeps on.  Anyone with news for the waiter (a
 * finished request, a wakeup) rings it; the waiter clears it before its last look at
 * the queues and then sleeps until it rings, so no ring between the look and the sleep
 * is lost.  On Linux it is an eventfd, which the kernel AIO backend also hands to the
 * kernel (IOCB_FLAG_RESFD); elsewhere a non-blocking pipe.
 */
#ifndef RT_INTERNAL_DOORBELL_H
#define RT_INTERNAL_DOORBELL_H

#include <stdint.h>

struct rt__doorbell {
    int read_fd;  /* what the waiter polls; the eventfd itself on Linux */
    int write_fd; /* what ringers write; the same eventfd on Linux */
};

/** @retval RT_OK, RT_ERR_TOO_MANY_OPEN_FILES, RT_ERR_NO_MEMORY */
int rt__doorbell_init(struct rt__doorbell *bell);
void rt__doorbell_fini(struct rt__doorbell *bell);

/** Rings the bell.  Any thread; never blocks. */
void rt__doorbell_ring(struct rt__doorbell *bell);

/** Clears the bell without blocking.  The waiter only. */
void rt__doorbell_clear(struct rt__doorbell *bell);

/**
 * Sleeps until the bell rings or the monotonic @a deadline_ns passes (UINT64_MAX: no
 * deadline).  The bell stays rung: clear it before sleeping again.
 * @retval RT_OK           it rang (or a signal woke the poll: re-check and sleep again).
 * @retval RT_ERR_TIMEOUT  the deadline passed.
 */
int rt__doorbell_wait(struct rt__doorbell *bell, uint64_t deadline_ns);

#endif /* RT_INTERNAL_DOORBELL_H */
