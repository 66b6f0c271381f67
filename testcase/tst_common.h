/*
 * What every CUnit test program here shares: a scratch directory, backend selection
 * and one way to run the registry and turn its outcome into an exit status that
 * automake understands (0 pass, 1 fail, 77 skip).
 *
 * Header-only on purpose: each test program is one .c file plus this.
 */
#ifndef TST_COMMON_H
#define TST_COMMON_H

#include <CUnit/Basic.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rt/err.h>
#include <rt/fileaio.h>

/* Exit status automake reads as "skipped". */
#define TST_SKIP 77

/* Asserts a status code and shows both names on failure. */
#define TST_RC(expr, want)                                                                         \
    do {                                                                                           \
        int tst_rc_ = (expr);                                                                      \
        if (tst_rc_ != (want))                                                                     \
            fprintf(stderr, "  %s:%d: %s -> %s, expected %s\n", __FILE__, __LINE__, #expr,         \
                    rt_status_name(tst_rc_), rt_status_name(want));                                \
        CU_ASSERT_EQUAL(tst_rc_, (want));                                                          \
    } while (0)

/* Same, but ends the test when it fails (use when later steps depend on it). */
#define TST_RC_FATAL(expr, want)                                                                   \
    do {                                                                                           \
        int tst_rc_ = (expr);                                                                      \
        if (tst_rc_ != (want))                                                                     \
            fprintf(stderr, "  %s:%d: %s -> %s, expected %s\n", __FILE__, __LINE__, #expr,         \
                    rt_status_name(tst_rc_), rt_status_name(want));                                \
        CU_ASSERT_EQUAL_FATAL(tst_rc_, (want));                                                    \
    } while (0)

/* A scratch directory for this process, removed at exit.  Honours TMPDIR; the
 * conformance tests want a real file system (O_DIRECT), so the default is /var/tmp. */
static char tst_dir_path[512];

static void tst_dir_remove(void)
{
    char cmd[600];
    if (tst_dir_path[0] == '\0')
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tst_dir_path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", tst_dir_path);
}

static inline const char *tst_dir(void)
{
    if (tst_dir_path[0] == '\0') {
        const char *base = getenv("TMPDIR");
        if (base == NULL || base[0] == '\0')
            base = "/var/tmp";
        snprintf(tst_dir_path, sizeof tst_dir_path, "%s/vrt-test-XXXXXX", base);
        if (mkdtemp(tst_dir_path) == NULL) {
            fprintf(stderr, "cannot create a scratch directory under %s: %s\n", base,
                    strerror(errno));
            exit(1);
        }
        atexit(tst_dir_remove);
    }
    return tst_dir_path;
}

/* A path inside the scratch directory; each call with the same name gives the same
 * path.  The buffer is the caller's. */
static inline char *tst_path(char *buf, size_t size, const char *name)
{
    int len = snprintf(buf, size, "%s/%s", tst_dir(), name);
    if (len < 0 || (size_t)len >= size) {
        fprintf(stderr, "scratch path for '%s' does not fit in %zu bytes\n", name, size);
        exit(1);
    }
    return buf;
}

/* The context flag that forces a backend, by its name; 0 for an unknown name. */
static inline uint32_t tst_backend_flag(const char *name)
{
    if (strcmp(name, "linux-aio") == 0)
        return RT_AIO_CTX_F_BACKEND_LINUX_AIO;
    if (strcmp(name, "io_uring") == 0)
        return RT_AIO_CTX_F_BACKEND_IO_URING;
    if (strcmp(name, "threads") == 0)
        return RT_AIO_CTX_F_BACKEND_THREADS;
    return 0;
}

/* Whether the backend can create a context on this host; prints why not.  Any other
 * failure than "not supported" ends the program. */
static inline bool tst_backend_available(const char *name)
{
    rt_aio_ctx_t ctx = RT_AIO_CTX_NIL;
    uint32_t flag = tst_backend_flag(name);
    int rc;
    if (flag == 0) {
        fprintf(stderr, "unknown backend '%s'\n", name);
        exit(1);
    }
    rc = rt_aio_ctx_create(&ctx, 8, flag);
    if (rc == RT_ERR_NOT_SUPPORTED) {
        printf("SKIP: the %s backend is not available on this host or build (%s)\n", name,
               rt_strerror(rc));
        return false;
    }
    if (rc != RT_OK) {
        fprintf(stderr, "cannot create a %s context: %s\n", name, rt_strerror(rc));
        exit(1);
    }
    rt_aio_ctx_destroy(ctx);
    return true;
}

/* Exits 77 with a reason when the backend cannot create a context on this host. */
static inline void tst_require_backend(const char *name)
{
    if (!tst_backend_available(name))
        exit(TST_SKIP);
}

/* Runs every registered suite with the basic interface and returns the exit status:
 * 0 when every test passed, 1 otherwise. */
static inline int tst_run(void)
{
    unsigned failed;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failed = CU_get_number_of_tests_failed();
    if (CU_get_error() != CUE_SUCCESS) {
        fprintf(stderr, "CUnit error: %s\n", CU_get_error_msg());
        failed = failed ? failed : 1;
    }
    CU_cleanup_registry();
    return failed == 0 ? 0 : 1;
}

/* Adds a suite or dies: registration failures are bugs in the test program. */
static inline CU_pSuite tst_suite(const char *name)
{
    CU_pSuite suite;
    if (CU_get_registry() == NULL && CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "CUnit: %s\n", CU_get_error_msg());
        exit(1);
    }
    suite = CU_add_suite(name, NULL, NULL);
    if (suite == NULL) {
        fprintf(stderr, "CUnit: %s\n", CU_get_error_msg());
        exit(1);
    }
    return suite;
}

/* A suite named "PREFIX-BACKEND" when the backend is available here; NULL (with the
 * reason printed) when it is not. */
static inline CU_pSuite tst_backend_suite(const char *prefix, const char *backend)
{
    char name[64];
    if (!tst_backend_available(backend))
        return NULL;
    snprintf(name, sizeof name, "%s-%s", prefix, backend);
    return tst_suite(name);
}

#define TST_ADD(suite, fn)                                                                         \
    do {                                                                                           \
        if (CU_add_test((suite), #fn, (fn)) == NULL) {                                             \
            fprintf(stderr, "CUnit: %s\n", CU_get_error_msg());                                    \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif /* TST_COMMON_H */
