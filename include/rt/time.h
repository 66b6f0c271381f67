/*
 * Monotonic time: never jumps with wall-clock changes, starts at an arbitrary point.
 */
#ifndef RT_TIME_H
#define RT_TIME_H

#include <rt/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Monotonic time in nanoseconds.  Thread-safe, never fails. */
uint64_t rt_time_nano_ts(void);

/** Monotonic time in milliseconds (rt_time_nano_ts() / 1000000).  Thread-safe. */
uint64_t rt_time_milli_ts(void);

#ifdef __cplusplus
}
#endif

#endif /* RT_TIME_H */
