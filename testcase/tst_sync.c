/*
 * The internal sync primitives (src/internal/sync.h): proves that the mutex makes
 * concurrent increments exact, that an event is binary and auto-reset (a signal before
 * the wait is consumed by exactly one wait), that event and condition waits time out
 * on time and wake promptly when signalled from another thread, that deadlines map
 * RT_INDEFINITE_WAIT to "never", and that a thread gets its argument, runs to the end
 * before join returns, hands its function's result to join, and starts with signals
 * blocked; that a thread knows itself and no other (rt__thread_is_self); and that the
 * waiter's spin budget grows to cover a wait it could have caught, caps, and falls
 * back to its base after a wait it could not.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <rt/time.h>
#include <rt/types.h>

#include "internal/spin_budget.h"
#include "internal/sync.h"
#include "tst_common.h"

#define MS (UINT64_C(1000000)) /* nanoseconds */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t elapsed_ms(uint64_t start_ns)
{
    return (rt_time_nano_ts() - start_ns) / MS;
}

/* ---- mutex --------------------------------------------------------------------- */

#define COUNTER_THREADS 4
#define COUNTER_ROUNDS  200000

struct counter {
    rt__mutex_t lock;
    volatile uint64_t value;
};

static void *counter_main(void *arg)
{
    struct counter *counter = arg;
    for (int i = 0; i < COUNTER_ROUNDS; i++) {
        rt__mutex_lock(&counter->lock);
        /* Read, yield a moment, write: without the lock updates would be lost. */
        uint64_t v = counter->value;
        if ((i & 1023) == 0)
            sched_yield();
        counter->value = v + 1;
        rt__mutex_unlock(&counter->lock);
    }
    return NULL;
}

static void test_mutex_counter(void)
{
    struct counter counter;
    rt__thread_t threads[COUNTER_THREADS];
    counter.value = 0;
    rt__mutex_init(&counter.lock);
    for (int i = 0; i < COUNTER_THREADS; i++)
        TST_RC_FATAL(rt__thread_create(&threads[i], counter_main, &counter, "tst-counter"), RT_OK);
    for (int i = 0; i < COUNTER_THREADS; i++)
        rt__thread_join(&threads[i]);
    CU_ASSERT_EQUAL(counter.value, (uint64_t)COUNTER_THREADS * COUNTER_ROUNDS);
    rt__mutex_destroy(&counter.lock);
}

/* ---- event --------------------------------------------------------------------- */

static void test_event_signal_before_wait(void)
{
    rt__event_t event;
    TST_RC_FATAL(rt__event_init(&event), RT_OK);

    /* Fresh: not signalled. */
    TST_RC(rt__event_wait(&event, 0), RT_ERR_TIMEOUT);

    rt__event_signal(&event);
    TST_RC(rt__event_wait(&event, 0), RT_OK);
    TST_RC(rt__event_wait(&event, 0), RT_ERR_TIMEOUT); /* consumed */

    /* Binary: two signals are one. */
    rt__event_signal(&event);
    rt__event_signal(&event);
    TST_RC(rt__event_wait(&event, 0), RT_OK);
    TST_RC(rt__event_wait(&event, 0), RT_ERR_TIMEOUT);

    /* A pending signal satisfies an indefinite wait at once. */
    rt__event_signal(&event);
    TST_RC(rt__event_wait(&event, RT_INDEFINITE_WAIT), RT_OK);
    TST_RC(rt__event_wait(&event, 0), RT_ERR_TIMEOUT);

    rt__event_destroy(&event);
}

static void test_event_timeout(void)
{
    rt__event_t event;
    uint64_t start, ms;
    TST_RC_FATAL(rt__event_init(&event), RT_OK);

    start = rt_time_nano_ts();
    TST_RC(rt__event_wait(&event, 100), RT_ERR_TIMEOUT);
    ms = elapsed_ms(start);
    if (ms < 99 || ms > 2000)
        fprintf(stderr, "  100 ms event wait took %llu ms\n", (unsigned long long)ms);
    CU_ASSERT_TRUE(ms >= 99);
    CU_ASSERT_TRUE(ms <= 2000);

    /* Polling does not block. */
    start = rt_time_nano_ts();
    TST_RC(rt__event_wait(&event, 0), RT_ERR_TIMEOUT);
    CU_ASSERT_TRUE(elapsed_ms(start) < 50);

    /* A short wait rounds to at least its time, not to zero. */
    start = rt_time_nano_ts();
    TST_RC(rt__event_wait(&event, 1), RT_ERR_TIMEOUT);
    CU_ASSERT_TRUE(rt_time_nano_ts() - start >= MS - MS / 10);

    rt__event_destroy(&event);
}

struct delayed_signal {
    rt__event_t *event;
    unsigned delay_ms;
};

static void *signal_later_main(void *opaque)
{
    struct delayed_signal *arg = opaque;
    sleep_ms(arg->delay_ms);
    rt__event_signal(arg->event);
    return NULL;
}

static void check_woken_by_thread(uint32_t timeout_ms)
{
    rt__event_t event;
    rt__thread_t thread;
    struct delayed_signal arg;
    uint64_t start, ms;

    TST_RC_FATAL(rt__event_init(&event), RT_OK);
    arg.event = &event;
    arg.delay_ms = 50;
    start = rt_time_nano_ts();
    TST_RC_FATAL(rt__thread_create(&thread, signal_later_main, &arg, "tst-signal"), RT_OK);
    TST_RC(rt__event_wait(&event, timeout_ms), RT_OK);
    ms = elapsed_ms(start);
    if (ms < 45 || ms > 2000)
        fprintf(stderr, "  woken after %llu ms (signal at 50 ms, timeout %u)\n",
                (unsigned long long)ms, (unsigned)timeout_ms);
    CU_ASSERT_TRUE(ms >= 45);
    CU_ASSERT_TRUE(ms <= 2000);
    rt__thread_join(&thread);
    TST_RC(rt__event_wait(&event, 0), RT_ERR_TIMEOUT); /* the wake consumed it */
    rt__event_destroy(&event);
}

static void test_event_wakes_indefinite_waiter(void)
{
    check_woken_by_thread(RT_INDEFINITE_WAIT);
}

static void test_event_wakes_timed_waiter(void)
{
    check_woken_by_thread(10000);
}

/* Ping-pong: many hand-offs between two threads, none lost. */
struct ping_pong {
    rt__event_t ping, pong;
    int rounds;
    int failures;
};

static void *pong_main(void *opaque)
{
    struct ping_pong *pp = opaque;
    for (int i = 0; i < pp->rounds; i++) {
        if (rt__event_wait(&pp->ping, 5000) != RT_OK) {
            pp->failures++;
            break;
        }
        rt__event_signal(&pp->pong);
    }
    return NULL;
}

static void test_event_ping_pong(void)
{
    struct ping_pong pp;
    rt__thread_t thread;
    int lost = 0;
    TST_RC_FATAL(rt__event_init(&pp.ping), RT_OK);
    TST_RC_FATAL(rt__event_init(&pp.pong), RT_OK);
    pp.rounds = 2000;
    pp.failures = 0;
    TST_RC_FATAL(rt__thread_create(&thread, pong_main, &pp, "tst-pong"), RT_OK);
    for (int i = 0; i < pp.rounds; i++) {
        rt__event_signal(&pp.ping);
        if (rt__event_wait(&pp.pong, 5000) != RT_OK) {
            lost++;
            break;
        }
    }
    rt__thread_join(&thread);
    CU_ASSERT_EQUAL(lost, 0);
    CU_ASSERT_EQUAL(pp.failures, 0);
    rt__event_destroy(&pp.ping);
    rt__event_destroy(&pp.pong);
}

/* ---- condition ----------------------------------------------------------------- */

static void test_cond_deadline_in_past(void)
{
    rt__mutex_t mutex;
    rt__cond_t cond;
    uint64_t start;
    rt__mutex_init(&mutex);
    TST_RC_FATAL(rt__cond_init(&cond), RT_OK);

    rt__mutex_lock(&mutex);
    start = rt_time_nano_ts();
    TST_RC(rt__cond_wait_until(&cond, &mutex, 0), RT_ERR_TIMEOUT);
    TST_RC(rt__cond_wait_until(&cond, &mutex, 1), RT_ERR_TIMEOUT);
    TST_RC(rt__cond_wait_until(&cond, &mutex, rt_time_nano_ts() - 1), RT_ERR_TIMEOUT);
    CU_ASSERT_TRUE(elapsed_ms(start) < 100);
    rt__mutex_unlock(&mutex);

    /* The mutex came back held and is released now: another lock works. */
    rt__mutex_lock(&mutex);
    rt__mutex_unlock(&mutex);

    rt__cond_destroy(&cond);
    rt__mutex_destroy(&mutex);
}

static void test_cond_deadline_future(void)
{
    rt__mutex_t mutex;
    rt__cond_t cond;
    uint64_t start, deadline, ms;
    int rc;
    rt__mutex_init(&mutex);
    TST_RC_FATAL(rt__cond_init(&cond), RT_OK);

    rt__mutex_lock(&mutex);
    start = rt_time_nano_ts();
    deadline = start + 80 * MS;
    /* Spurious returns are allowed: wait again until the verdict is a timeout. */
    do
        rc = rt__cond_wait_until(&cond, &mutex, deadline);
    while (rc == RT_OK && rt_time_nano_ts() < deadline);
    rt__mutex_unlock(&mutex);
    ms = elapsed_ms(start);
    TST_RC(rc, RT_ERR_TIMEOUT);
    CU_ASSERT_TRUE(rt_time_nano_ts() >= deadline);
    CU_ASSERT_TRUE(ms <= 2000);

    rt__cond_destroy(&cond);
    rt__mutex_destroy(&mutex);
}

struct flag_cond {
    rt__mutex_t mutex;
    rt__cond_t cond;
    bool flag;
    int woken;
    bool broadcast;
};

static void *set_flag_later_main(void *opaque)
{
    struct flag_cond *fc = opaque;
    sleep_ms(50);
    rt__mutex_lock(&fc->mutex);
    fc->flag = true;
    if (fc->broadcast)
        rt__cond_broadcast(&fc->cond);
    else
        rt__cond_signal(&fc->cond);
    rt__mutex_unlock(&fc->mutex);
    return NULL;
}

static void *flag_waiter_main(void *opaque)
{
    struct flag_cond *fc = opaque;
    uint64_t deadline = rt_time_nano_ts() + 5000 * MS;
    rt__mutex_lock(&fc->mutex);
    while (!fc->flag && rt__cond_wait_until(&fc->cond, &fc->mutex, deadline) == RT_OK)
        ;
    if (fc->flag)
        fc->woken++;
    rt__mutex_unlock(&fc->mutex);
    return NULL;
}

static void test_cond_signal_wakes_waiter(void)
{
    struct flag_cond fc = {.flag = false, .woken = 0, .broadcast = false};
    rt__thread_t setter;
    uint64_t start;
    int rc = RT_OK;

    rt__mutex_init(&fc.mutex);
    TST_RC_FATAL(rt__cond_init(&fc.cond), RT_OK);
    start = rt_time_nano_ts();
    TST_RC_FATAL(rt__thread_create(&setter, set_flag_later_main, &fc, "tst-setter"), RT_OK);
    rt__mutex_lock(&fc.mutex);
    while (!fc.flag && rc == RT_OK)
        rc = rt__cond_wait_until(&fc.cond, &fc.mutex, UINT64_MAX);
    rt__mutex_unlock(&fc.mutex);
    rt__thread_join(&setter);
    TST_RC(rc, RT_OK);
    CU_ASSERT_TRUE(fc.flag);
    CU_ASSERT_TRUE(elapsed_ms(start) >= 45);
    CU_ASSERT_TRUE(elapsed_ms(start) <= 2000);
    rt__cond_destroy(&fc.cond);
    rt__mutex_destroy(&fc.mutex);
}

static void test_cond_broadcast_wakes_all(void)
{
    enum { WAITERS = 3 };
    struct flag_cond fc = {.flag = false, .woken = 0, .broadcast = true};
    rt__thread_t waiters[WAITERS], setter;
    uint64_t start;

    rt__mutex_init(&fc.mutex);
    TST_RC_FATAL(rt__cond_init(&fc.cond), RT_OK);
    start = rt_time_nano_ts();
    for (int i = 0; i < WAITERS; i++)
        TST_RC_FATAL(rt__thread_create(&waiters[i], flag_waiter_main, &fc, "tst-waiter"), RT_OK);
    TST_RC_FATAL(rt__thread_create(&setter, set_flag_later_main, &fc, "tst-setter"), RT_OK);
    for (int i = 0; i < WAITERS; i++)
        rt__thread_join(&waiters[i]);
    rt__thread_join(&setter);
    CU_ASSERT_EQUAL(fc.woken, WAITERS);
    /* Woken by the broadcast, not by their 5 s deadline. */
    CU_ASSERT_TRUE(elapsed_ms(start) < 4000);
    rt__cond_destroy(&fc.cond);
    rt__mutex_destroy(&fc.mutex);
}

/* ---- deadlines ----------------------------------------------------------------- */

static void test_deadline_from_ms(void)
{
    uint64_t before, after, d;

    CU_ASSERT_EQUAL(rt__deadline_from_ms(RT_INDEFINITE_WAIT), UINT64_MAX);

    before = rt_time_nano_ts();
    d = rt__deadline_from_ms(0);
    after = rt_time_nano_ts();
    CU_ASSERT_TRUE(d >= before && d <= after);

    before = rt_time_nano_ts();
    d = rt__deadline_from_ms(1500);
    after = rt_time_nano_ts();
    CU_ASSERT_TRUE(d >= before + 1500 * MS && d <= after + 1500 * MS);

    /* The largest finite timeout is still finite. */
    before = rt_time_nano_ts();
    d = rt__deadline_from_ms(RT_INDEFINITE_WAIT - 1);
    CU_ASSERT_TRUE(d != UINT64_MAX);
    CU_ASSERT_TRUE(d >= before + (uint64_t)(RT_INDEFINITE_WAIT - 1) * MS);
}

/* ---- threads ------------------------------------------------------------------- */

struct thread_job {
    int input;
    int output;
    bool finished;
    bool signals_blocked;
};

static void *job_main(void *opaque)
{
    struct thread_job *job = opaque;
    sigset_t mask;
    sleep_ms(20); /* join must really wait for this */
    job->signals_blocked = pthread_sigmask(SIG_BLOCK, NULL, &mask) == 0 &&
                           sigismember(&mask, SIGINT) == 1 && sigismember(&mask, SIGTERM) == 1 &&
                           sigismember(&mask, SIGUSR1) == 1 && sigismember(&mask, SIGALRM) == 1;
    job->output = job->input * 2 + 1;
    job->finished = true;
    return job;
}

static void test_thread_arg_and_result(void)
{
    enum { JOBS = 4 };
    rt__thread_t threads[JOBS];
    struct thread_job jobs[JOBS];

    for (int i = 0; i < JOBS; i++) {
        jobs[i] = (struct thread_job){.input = 100 + i};
        TST_RC_FATAL(rt__thread_create(&threads[i], job_main, &jobs[i], "tst-job"), RT_OK);
    }
    for (int i = 0; i < JOBS; i++) {
        CU_ASSERT_PTR_EQUAL(rt__thread_join(&threads[i]), &jobs[i]); /* fn's result */
        CU_ASSERT_TRUE(jobs[i].finished);
        CU_ASSERT_EQUAL(jobs[i].output, (100 + i) * 2 + 1);
        CU_ASSERT_TRUE(jobs[i].signals_blocked);
    }
}

/* The creator's own signal mask is left as it was. */
static void test_thread_create_keeps_caller_mask(void)
{
    sigset_t before, after;
    rt__thread_t thread;
    struct thread_job job = {.input = 1};
    CU_ASSERT_FATAL(pthread_sigmask(SIG_BLOCK, NULL, &before) == 0);
    TST_RC_FATAL(rt__thread_create(&thread, job_main, &job, "tst-mask"), RT_OK);
    CU_ASSERT_FATAL(pthread_sigmask(SIG_BLOCK, NULL, &after) == 0);
    CU_ASSERT_PTR_EQUAL(rt__thread_join(&thread), &job);
    CU_ASSERT_EQUAL(sigismember(&before, SIGINT), sigismember(&after, SIGINT));
    CU_ASSERT_EQUAL(sigismember(&before, SIGUSR1), sigismember(&after, SIGUSR1));
    CU_ASSERT_EQUAL(sigismember(&before, SIGTERM), sigismember(&after, SIGTERM));
    CU_ASSERT_EQUAL(job.output, 3);
}

static void *is_self_elsewhere(void *arg)
{
    static bool answer;
    answer = rt__thread_is_self(arg);
    return &answer;
}

static void test_thread_self(void)
{
    rt__thread_t self = rt__thread_self(), other;
    bool *elsewhere;

    CU_ASSERT_TRUE(rt__thread_is_self(&self));
    TST_RC_FATAL(rt__thread_create(&other, is_self_elsewhere, &self, "tst-self"), RT_OK);
    elsewhere = rt__thread_join(&other);
    CU_ASSERT_FALSE(*elsewhere); /* the main thread's identity is not the new thread's */
}

static void test_spin_budget(void)
{
    struct rt__spin_budget budget;

    rt__spin_budget_init(&budget, 100000);
    CU_ASSERT_EQUAL(budget.ns, 0);         /* sleeps at once until a wait says otherwise */
    rt__spin_budget_slept(&budget, 40000); /* caught next time, with a quarter to spare */
    CU_ASSERT_EQUAL(budget.ns, 50000);
    rt__spin_budget_slept(&budget, 60000);
    CU_ASSERT_EQUAL(budget.ns, 75000);
    rt__spin_budget_slept(&budget, 90000); /* 112500 wanted: capped */
    CU_ASSERT_EQUAL(budget.ns, 100000);
    rt__spin_budget_slept(&budget, 100000); /* exactly the cap: still worth covering */
    CU_ASSERT_EQUAL(budget.ns, 100000);
    rt__spin_budget_slept(&budget, 30000); /* a spin cut short by a deadline: kept */
    CU_ASSERT_EQUAL(budget.ns, 100000);
    rt__spin_budget_slept(&budget, 100001); /* longer than any spin may be: none */
    CU_ASSERT_EQUAL(budget.ns, 0);
    rt__spin_budget_slept(&budget, UINT64_MAX);
    CU_ASSERT_EQUAL(budget.ns, 0);

    /* A cap of 0 means "never spin". */
    rt__spin_budget_init(&budget, 0);
    rt__spin_budget_slept(&budget, 1);
    rt__spin_budget_slept(&budget, 0);
    CU_ASSERT_EQUAL(budget.ns, 0);
}

int main(void)
{
    CU_pSuite mutex = tst_suite("mutex");
    CU_pSuite event = tst_suite("event semaphore");
    CU_pSuite cond = tst_suite("condition");
    CU_pSuite misc = tst_suite("threads and deadlines");

    TST_ADD(mutex, test_mutex_counter);

    TST_ADD(event, test_event_signal_before_wait);
    TST_ADD(event, test_event_timeout);
    TST_ADD(event, test_event_wakes_indefinite_waiter);
    TST_ADD(event, test_event_wakes_timed_waiter);
    TST_ADD(event, test_event_ping_pong);

    TST_ADD(cond, test_cond_deadline_in_past);
    TST_ADD(cond, test_cond_deadline_future);
    TST_ADD(cond, test_cond_signal_wakes_waiter);
    TST_ADD(cond, test_cond_broadcast_wakes_all);

    TST_ADD(misc, test_deadline_from_ms);
    TST_ADD(misc, test_thread_arg_and_result);
    TST_ADD(misc, test_thread_create_keeps_caller_mask);
    TST_ADD(misc, test_thread_self);
    TST_ADD(misc, test_spin_budget);

    return tst_run();
}
