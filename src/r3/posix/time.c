/*
 * Monotonic time from CLOCK_MONOTONIC.
 */
#include <config.h>

#include <time.h>

#include <rt/time.h>

uint64_t rt_time_nano_ts(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t rt_time_milli_ts(void)
{
    return rt_time_nano_ts() / 1000000u;
}
