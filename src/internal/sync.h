/*
 * Threads, mutexes and event semaphores: the small set of primitives the runtime
 * itself needs, thin over pthreads.
 *
 * Mutex and condition calls cannot fail on a correct program, so they return void and
 * abort on a broken invariant (EDEADLK, EPERM): that is a bug in the library, not an
 * outcome a caller could handle.
 */
#ifndef RT_INTERNAL_SYNC_H
#define RT_INTERNAL_SYNC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- mutex ------------------------------------------------------------------- */
typedef struct rt__mutex {
    pthread_mutex_t m;
} rt__mutex_t;

void rt__mutex_init(rt__mutex_t *mutex);
void rt__mutex_destroy(rt__mutex_t *mutex);
void rt__mutex_lock(rt__mutex_t *mutex);
void rt__mutex_unlock(rt__mutex_t *mutex);

/* ---- condition variable on the monotonic clock --------------------------------- */
typedef struct rt__cond {
    pthread_cond_t c;
} rt__cond_t;

/** @retval RT_OK, RT_ERR_NO_MEMORY, RT_ERR_GENERAL_FAILURE */
int rt__cond_init(rt__cond_t *cond);
void rt__cond_destroy(rt__cond_t *cond);
void rt__cond_signal(rt__cond_t *cond);
void rt__cond_broadcast(rt__cond_t *cond);
/**
 * Waits until signalled or until the monotonic time @a deadline_ns
 * (rt_time_nano_ts() scale; UINT64_MAX: no deadline).  Spurious returns happen:
 * re-check the condition.
 * @retval RT_OK, RT_ERR_TIMEOUT
 */
int rt__cond_wait_until(rt__cond_t *cond, rt__mutex_t *mutex, uint64_t deadline_ns);

/* ---- event semaphore ----------------------------------------------------------- */
/** A binary event: signal sets it, a successful wait consumes it (auto-reset). */
typedef struct rt__event {
    rt__mutex_t lock;
    rt__cond_t cond;
    bool signalled;
} rt__event_t;

/** @retval RT_OK, RT_ERR_NO_MEMORY, RT_ERR_GENERAL_FAILURE */
int rt__event_init(rt__event_t *event);
void rt__event_destroy(rt__event_t *event);
/** Sets the event, waking one waiter.  Any thread. */
void rt__event_signal(rt__event_t *event);
/**
 * Waits for the event and consumes it.
 * @param timeout_ms  0: poll; RT_INDEFINITE_WAIT: forever.
 * @retval RT_OK, RT_ERR_TIMEOUT
 */
int rt__event_wait(rt__event_t *event, uint32_t timeout_ms);

/* ---- threads ------------------------------------------------------------------- */
typedef struct rt__thread {
    pthread_t id;
} rt__thread_t;

/**
 * Starts a joinable thread running fn(arg).  Signals are blocked in the new thread, so
 * the library's threads never run a host's signal handlers.
 * @retval RT_OK, RT_ERR_TRY_AGAIN (thread limit), RT_ERR_NO_MEMORY
 */
int rt__thread_create(rt__thread_t *thread, void *(*fn)(void *), void *arg, const char *name);
/** Waits for the thread to end. @return what its function returned. */
void *rt__thread_join(rt__thread_t *thread);
/** The calling thread, as a value rt__thread_is_self() can test later. */
rt__thread_t rt__thread_self(void);
/** Whether the calling thread is @a thread. */
bool rt__thread_is_self(const rt__thread_t *thread);

/* ---- deadlines ----------------------------------------------------------------- */
/** The monotonic deadline @a timeout_ms from now; UINT64_MAX for RT_INDEFINITE_WAIT. */
uint64_t rt__deadline_from_ms(uint32_t timeout_ms);

#endif /* RT_INTERNAL_SYNC_H */
