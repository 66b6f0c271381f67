/*
 * Mutexes, condition variables on the monotonic clock, event semaphores and threads,
 * over pthreads.
 */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rt/err.h>
#include <rt/time.h>
#include <rt/types.h>

#include "internal/sync.h"

/* A pthread call that fails here means the library broke an invariant (unlocking a
 * mutex it does not hold, say).  No caller can recover from that; stop loudly. */
static void check(int err, const char *what)
{
    if (err != 0) {
        fprintf(stderr, "vrt: %s failed: %s\n", what, strerror(err));
        abort();
    }
}

void rt__mutex_init(rt__mutex_t *mutex)
{
    check(pthread_mutex_init(&mutex->m, NULL), "pthread_mutex_init");
}

void rt__mutex_destroy(rt__mutex_t *mutex)
{
    check(pthread_mutex_destroy(&mutex->m), "pthread_mutex_destroy");
}

void rt__mutex_lock(rt__mutex_t *mutex)
{
    check(pthread_mutex_lock(&mutex->m), "pthread_mutex_lock");
}

void rt__mutex_unlock(rt__mutex_t *mutex)
{
    check(pthread_mutex_unlock(&mutex->m), "pthread_mutex_unlock");
}

int rt__cond_init(rt__cond_t *cond)
{
    pthread_condattr_t attr;
    int err = pthread_condattr_init(&attr);

    if (err == 0) {
        err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (err == 0)
            err = pthread_cond_init(&cond->c, &attr);
        pthread_condattr_destroy(&attr);
    }
    return err == 0 ? RT_OK : rt_err_from_errno(err);
}

void rt__cond_destroy(rt__cond_t *cond)
{
    check(pthread_cond_destroy(&cond->c), "pthread_cond_destroy");
}

void rt__cond_signal(rt__cond_t *cond)
{
    check(pthread_cond_signal(&cond->c), "pthread_cond_signal");
}

void rt__cond_broadcast(rt__cond_t *cond)
{
    check(pthread_cond_broadcast(&cond->c), "pthread_cond_broadcast");
}

int rt__cond_wait_until(rt__cond_t *cond, rt__mutex_t *mutex, uint64_t deadline_ns)
{
    struct timespec ts;
    int err;

    if (deadline_ns == UINT64_MAX) {
        check(pthread_cond_wait(&cond->c, &mutex->m), "pthread_cond_wait");
        return RT_OK;
    }
    ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
    ts.tv_nsec = (long)(deadline_ns % 1000000000u);
    err = pthread_cond_timedwait(&cond->c, &mutex->m, &ts);
    if (err == ETIMEDOUT)
        return RT_ERR_TIMEOUT;
    check(err, "pthread_cond_timedwait");
    return RT_OK;
}

uint64_t rt__deadline_from_ms(uint32_t timeout_ms)
{
    if (timeout_ms == RT_INDEFINITE_WAIT)
        return UINT64_MAX;
    return rt_time_nano_ts() + (uint64_t)timeout_ms * 1000000u;
}

int rt__event_init(rt__event_t *event)
{
    rt__mutex_init(&event->lock);
    event->signalled = false;
    int rc = rt__cond_init(&event->cond);
    if (rc != RT_OK)
        rt__mutex_destroy(&event->lock);
    return rc;
}

void rt__event_destroy(rt__event_t *event)
{
    rt__cond_destroy(&event->cond);
    rt__mutex_destroy(&event->lock);
}

void rt__event_signal(rt__event_t *event)
{
    rt__mutex_lock(&event->lock);
    event->signalled = true;
    rt__cond_signal(&event->cond);
    rt__mutex_unlock(&event->lock);
}

int rt__event_wait(rt__event_t *event, uint32_t timeout_ms)
{
    uint64_t deadline = rt__deadline_from_ms(timeout_ms);
    int rc = RT_OK;

    rt__mutex_lock(&event->lock);
    while (!event->signalled && rc == RT_OK)
        rc = rt__cond_wait_until(&event->cond, &event->lock, deadline);
    if (event->signalled) {
        event->signalled = false;
        rc = RT_OK;
    }
    rt__mutex_unlock(&event->lock);
    return rc;
}

int rt__thread_create(rt__thread_t *thread, void *(*fn)(void *), void *arg, const char *name)
{
    sigset_t all, old;
    int err;

    /* The new thread inherits this mask: block everything so a host's signal handlers
     * never run on a library thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&thread->id, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0)
        return err == EAGAIN ? RT_ERR_TRY_AGAIN : rt_err_from_errno(err);
#ifdef __linux__
    if (name != NULL)
        pthread_setname_np(thread->id, name);
#endif
    return RT_OK;
}

void *rt__thread_join(rt__thread_t *thread)
{
    void *result = NULL;
    check(pthread_join(thread->id, &result), "pthread_join");
    return result;
}

rt__thread_t rt__thread_self(void)
{
    rt__thread_t self = {.id = pthread_self()};
    return self;
}

bool rt__thread_is_self(const rt__thread_t *thread)
{
    return pthread_equal(thread->id, pthread_self()) != 0;
}
