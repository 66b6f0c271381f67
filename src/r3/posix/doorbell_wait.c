/*
 * Sleeping on a doorbell with poll(): the part both the eventfd and the pipe doorbell
 * share.
 */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>

#include <rt/err.h>
#include <rt/time.h>

#include "internal/doorbell.h"

int rt__doorbell_wait(struct rt__doorbell *bell, uint64_t deadline_ns)
{
    struct pollfd pfd = {.fd = bell->read_fd, .events = POLLIN};
    int timeout_ms = -1;

    if (deadline_ns != UINT64_MAX) {
        uint64_t now = rt_time_nano_ts();
        uint64_t left_ms;
        if (now >= deadline_ns)
            return RT_ERR_TIMEOUT;
        /* Round up, so the poll never returns just before the deadline and makes the
         * caller spin through a zero-timeout poll. */
        left_ms = (deadline_ns - now + 999999u) / 1000000u;
        timeout_ms = left_ms > INT_MAX ? INT_MAX : (int)left_ms;
    }
    if (poll(&pfd, 1, timeout_ms) == 0 && deadline_ns != UINT64_MAX &&
        rt_time_nano_ts() >= deadline_ns)
        return RT_ERR_TIMEOUT;
    return RT_OK;
}
