/*
 * The ordered list of AIO backends and the choice among them.
 *
 * The list comes from configure (aio_backend_list.h): best first, and only the
 * backends this build has.  A context without a backend flag or RT_AIO_BACKEND takes
 * the first whose probe succeeds; "threads" is last and always succeeds, so there is
 * always a backend.  Probes run once per process.
 */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include <rt/err.h>

#include "generic/aio_backend_list.h"
#include "internal/aio.h"

#define DECLARE_BACKEND(name) extern const struct rt__aio_backend name;
RT_AIO_BACKEND_LIST(DECLARE_BACKEND)
#undef DECLARE_BACKEND

#define BACKEND_ADDRESS(name) &name,
static const struct rt__aio_backend *const backends[] = {RT_AIO_BACKEND_LIST(BACKEND_ADDRESS)};
#undef BACKEND_ADDRESS

#define BACKEND_COUNT (sizeof backends / sizeof backends[0])

static int probe_results[BACKEND_COUNT];
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static void probe_all(void)
{
    for (size_t i = 0; i < BACKEND_COUNT; i++)
        probe_results[i] = backends[i]->probe();
}

int rt__aio_backend_probe(const struct rt__aio_backend *backend)
{
    pthread_once(&probe_once, probe_all);
    for (size_t i = 0; i < BACKEND_COUNT; i++) {
        if (backends[i] == backend)
            return probe_results[i];
    }
    return RT_ERR_NOT_SUPPORTED;
}

const struct rt__aio_backend *rt__aio_backend_by_name(const char *name)
{
    for (size_t i = 0; i < BACKEND_COUNT; i++) {
        if (strcmp(backends[i]->name, name) == 0)
            return backends[i];
    }
    return NULL;
}

const struct rt__aio_backend *rt__aio_backend_by_flag(uint32_t flag)
{
    for (size_t i = 0; i < BACKEND_COUNT; i++) {
        if (backends[i]->flag == flag)
            return backends[i];
    }
    return NULL;
}

const struct rt__aio_backend *rt__aio_backend_default(void)
{
    for (size_t i = 0; i < BACKEND_COUNT; i++) {
        if (rt__aio_backend_probe(backends[i]) == RT_OK)
            return backends[i];
    }
    return backends[BACKEND_COUNT - 1];
}
