/*
 * Status codes (<rt/err.h>): proves that RT_STATUS_MAP gives distinct negative codes
 * (RT_OK alone is 0), that rt_strerror() and rt_status_name() answer every code, known
 * or not, with the table's text and name, that RT_SUCCESS/RT_FAILURE split on the
 * sign, and that rt_err_from_errno() maps each errno to the code whose table text
 * names it, takes a negative errno as its absolute value and falls back to
 * RT_ERR_GENERAL_FAILURE.
 */
#include <errno.h>
#include <limits.h>

#include "tst_common.h"

struct status_row {
    int value;
    const char *name;
    const char *text;
};

static const struct status_row rows[] = {
#define ROW_(name, value, text) {(value), #name, (text)},
    RT_STATUS_MAP(ROW_)
#undef ROW_
};

#define N_ROWS (sizeof rows / sizeof rows[0])

static const char unknown_text[] = "unknown status code";
static const char unknown_name[] = "RT_ERR_UNKNOWN";

/* Lowest code in the table, so "one below" is surely unknown. */
static int lowest_code(void)
{
    int low = 0;
    for (size_t i = 0; i < N_ROWS; i++)
        if (rows[i].value < low)
            low = rows[i].value;
    return low;
}

static void test_codes_distinct_and_negative(void)
{
    CU_ASSERT_EQUAL(RT_OK, 0);
    CU_ASSERT_TRUE(N_ROWS > 30);
    for (size_t i = 0; i < N_ROWS; i++) {
        if (strcmp(rows[i].name, "RT_OK") == 0) {
            CU_ASSERT_EQUAL(rows[i].value, 0);
        } else {
            if (rows[i].value >= 0)
                fprintf(stderr, "  %s = %d is not negative\n", rows[i].name, rows[i].value);
            CU_ASSERT_TRUE(rows[i].value < 0);
            CU_ASSERT_EQUAL(strncmp(rows[i].name, "RT_ERR_", 7), 0);
        }
        for (size_t j = i + 1; j < N_ROWS; j++) {
            if (rows[i].value == rows[j].value)
                fprintf(stderr, "  %s and %s share %d\n", rows[i].name, rows[j].name,
                        rows[i].value);
            CU_ASSERT_NOT_EQUAL(rows[i].value, rows[j].value);
            CU_ASSERT_NOT_EQUAL(strcmp(rows[i].name, rows[j].name), 0);
        }
    }
}

/* The contract's required codes exist (this compiles only if they do) and differ. */
static void test_required_codes_present(void)
{
    static const int required[] = {
        RT_ERR_INVALID_PARAMETER,
        RT_ERR_INVALID_POINTER,
        RT_ERR_INVALID_HANDLE,
        RT_ERR_OUT_OF_RANGE,
        RT_ERR_NO_MEMORY,
        RT_ERR_NOT_SUPPORTED,
        RT_ERR_TIMEOUT,
        RT_ERR_INTERRUPTED,
        RT_ERR_TRY_AGAIN,
        RT_ERR_FILE_NOT_FOUND,
        RT_ERR_ALREADY_EXISTS,
        RT_ERR_ACCESS_DENIED,
        RT_ERR_IO,
        RT_ERR_DISK_FULL,
        RT_ERR_AIO_IN_PROGRESS,
        RT_ERR_AIO_NOT_SUBMITTED,
        RT_ERR_AIO_BUSY,
        RT_ERR_AIO_NO_REQUEST,
        RT_ERR_AIO_CANCELED,
        RT_ERR_AIO_INSUFFICIENT_RESOURCES,
        RT_ERR_AIO_INSUFFICIENT_EVENTS,
    };
    size_t n = sizeof required / sizeof required[0];
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_TRUE(required[i] < 0);
        for (size_t j = i + 1; j < n; j++)
            CU_ASSERT_NOT_EQUAL(required[i], required[j]);
    }
}

static void test_strerror_known(void)
{
    for (size_t i = 0; i < N_ROWS; i++) {
        const char *text = rt_strerror(rows[i].value);
        CU_ASSERT_PTR_NOT_NULL_FATAL(text);
        CU_ASSERT_TRUE(text[0] != '\0');
        if (strcmp(text, rows[i].text) != 0)
            fprintf(stderr, "  rt_strerror(%s) = \"%s\", expected \"%s\"\n", rows[i].name, text,
                    rows[i].text);
        CU_ASSERT_STRING_EQUAL(text, rows[i].text);
        CU_ASSERT_STRING_NOT_EQUAL(text, unknown_text);
        /* Stable: the same pointer's text every time. */
        CU_ASSERT_STRING_EQUAL(rt_strerror(rows[i].value), text);
    }
}

static void test_strerror_texts_distinct(void)
{
    for (size_t i = 0; i < N_ROWS; i++)
        for (size_t j = i + 1; j < N_ROWS; j++) {
            const char *a = rt_strerror(rows[i].value);
            const char *b = rt_strerror(rows[j].value);
            CU_ASSERT_PTR_NOT_NULL_FATAL(a);
            CU_ASSERT_PTR_NOT_NULL_FATAL(b);
            if (strcmp(a, b) == 0)
                fprintf(stderr, "  %s and %s share the text \"%s\"\n", rows[i].name, rows[j].name,
                        a);
            CU_ASSERT_NOT_EQUAL(strcmp(a, b), 0);
        }
}

static void test_strerror_unknown(void)
{
    const int unknown[] = {1, 2, 100, INT_MAX, lowest_code() - 1, -1000, -100000, INT_MIN};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *text = rt_strerror(unknown[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(text);
        if (strcmp(text, unknown_text) != 0)
            fprintf(stderr, "  rt_strerror(%d) = \"%s\"\n", unknown[i], text);
        CU_ASSERT_STRING_EQUAL(text, unknown_text);
    }
}

static void test_status_name(void)
{
    const int unknown[] = {1, INT_MAX, lowest_code() - 1, -1000, INT_MIN};
    for (size_t i = 0; i < N_ROWS; i++) {
        const char *name = rt_status_name(rows[i].value);
        CU_ASSERT_PTR_NOT_NULL_FATAL(name);
        CU_ASSERT_STRING_EQUAL(name, rows[i].name);
    }
    CU_ASSERT_STRING_EQUAL(rt_status_name(RT_ERR_TIMEOUT), "RT_ERR_TIMEOUT");
    CU_ASSERT_STRING_EQUAL(rt_status_name(RT_OK), "RT_OK");
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *name = rt_status_name(unknown[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(name);
        CU_ASSERT_STRING_EQUAL(name, unknown_name);
    }
}

static void test_success_failure_macros(void)
{
    CU_ASSERT_TRUE(RT_SUCCESS(RT_OK));
    CU_ASSERT_FALSE(RT_FAILURE(RT_OK));
    CU_ASSERT_TRUE(RT_SUCCESS(1)); /* informational statuses are successes */
    CU_ASSERT_FALSE(RT_FAILURE(1));
    CU_ASSERT_TRUE(RT_SUCCESS(INT_MAX));
    CU_ASSERT_TRUE(RT_FAILURE(INT_MIN));
    CU_ASSERT_FALSE(RT_SUCCESS(INT_MIN));
    for (size_t i = 0; i < N_ROWS; i++) {
        if (rows[i].value == RT_OK)
            continue;
        CU_ASSERT_TRUE(RT_FAILURE(rows[i].value));
        CU_ASSERT_FALSE(RT_SUCCESS(rows[i].value));
    }
    /* The macros take any expression. */
    CU_ASSERT_TRUE(RT_FAILURE(RT_OK - 1));
    CU_ASSERT_TRUE(RT_SUCCESS(RT_OK + 1 - 1));
}

struct errno_row {
    int errnum;
    int want;
    const char *errname;
};

/* Each errno whose meaning one table text states outright. */
static const struct errno_row errno_rows[] = {
    {ENOENT, RT_ERR_FILE_NOT_FOUND, "ENOENT"},
    {EEXIST, RT_ERR_ALREADY_EXISTS, "EEXIST"},
    {EACCES, RT_ERR_ACCESS_DENIED, "EACCES"},
    {EPERM, RT_ERR_NOT_PERMITTED, "EPERM"},
    {EIO, RT_ERR_IO, "EIO"},
    {ENOSPC, RT_ERR_DISK_FULL, "ENOSPC"},
    {EDQUOT, RT_ERR_DISK_FULL, "EDQUOT"},
    {ENOMEM, RT_ERR_NO_MEMORY, "ENOMEM"},
    {EINVAL, RT_ERR_INVALID_PARAMETER, "EINVAL"},
    {EAGAIN, RT_ERR_TRY_AGAIN, "EAGAIN"},
    {EWOULDBLOCK, RT_ERR_TRY_AGAIN, "EWOULDBLOCK"},
    {ETIMEDOUT, RT_ERR_TIMEOUT, "ETIMEDOUT"},
    {EISDIR, RT_ERR_IS_A_DIRECTORY, "EISDIR"},
    {ENOTDIR, RT_ERR_NOT_A_DIRECTORY, "ENOTDIR"},
    {EMFILE, RT_ERR_TOO_MANY_OPEN_FILES, "EMFILE"},
    {EFBIG, RT_ERR_FILE_TOO_BIG, "EFBIG"},
    {EROFS, RT_ERR_READ_ONLY_FS, "EROFS"},
    {ENAMETOOLONG, RT_ERR_NAME_TOO_LONG, "ENAMETOOLONG"},
    {EBADF, RT_ERR_BAD_FILE, "EBADF"},
    {EBUSY, RT_ERR_BUSY, "EBUSY"},
    {EOPNOTSUPP, RT_ERR_NOT_SUPPORTED, "EOPNOTSUPP"},
    {ENOTSUP, RT_ERR_NOT_SUPPORTED, "ENOTSUP"},
};

#define N_ERRNO_ROWS (sizeof errno_rows / sizeof errno_rows[0])

static void check_errno(int errnum, int want, const char *errname)
{
    int got = rt_err_from_errno(errnum);
    if (got != want)
        fprintf(stderr, "  rt_err_from_errno(%s = %d) -> %s, expected %s\n", errname, errnum,
                rt_status_name(got), rt_status_name(want));
    CU_ASSERT_EQUAL(got, want);
}

static void test_from_errno_common(void)
{
    for (size_t i = 0; i < N_ERRNO_ROWS; i++)
        check_errno(errno_rows[i].errnum, errno_rows[i].want, errno_rows[i].errname);
}

static void test_from_errno_negative(void)
{
    for (size_t i = 0; i < N_ERRNO_ROWS; i++)
        check_errno(-errno_rows[i].errnum, errno_rows[i].want, errno_rows[i].errname);
}

static void test_from_errno_zero(void)
{
    TST_RC(rt_err_from_errno(0), RT_OK);
}

/* Whatever an errno maps to is a failure code from the table, never RT_OK. */
static void test_from_errno_always_a_known_failure(void)
{
    for (int e = 1; e < 256; e++) {
        int got = rt_err_from_errno(e);
        int neg = rt_err_from_errno(-e);
        CU_ASSERT_TRUE(got < 0);
        CU_ASSERT_EQUAL(got, neg);
        CU_ASSERT_STRING_NOT_EQUAL(rt_strerror(got), unknown_text);
        CU_ASSERT_STRING_NOT_EQUAL(rt_status_name(got), unknown_name);
    }
}

static void test_from_errno_unknown(void)
{
    /* Not errno values at all, and errnos no table text speaks of. */
    TST_RC(rt_err_from_errno(9999), RT_ERR_GENERAL_FAILURE);
    TST_RC(rt_err_from_errno(-9999), RT_ERR_GENERAL_FAILURE);
    TST_RC(rt_err_from_errno(INT_MAX), RT_ERR_GENERAL_FAILURE);
    TST_RC(rt_err_from_errno(ECHILD), RT_ERR_GENERAL_FAILURE);
    TST_RC(rt_err_from_errno(EDOM), RT_ERR_GENERAL_FAILURE);
}

int main(void)
{
    CU_pSuite table = tst_suite("status table");
    CU_pSuite text = tst_suite("texts and names");
    CU_pSuite from_errno = tst_suite("rt_err_from_errno");

    TST_ADD(table, test_codes_distinct_and_negative);
    TST_ADD(table, test_required_codes_present);
    TST_ADD(table, test_success_failure_macros);

    TST_ADD(text, test_strerror_known);
    TST_ADD(text, test_strerror_texts_distinct);
    TST_ADD(text, test_strerror_unknown);
    TST_ADD(text, test_status_name);

    TST_ADD(from_errno, test_from_errno_common);
    TST_ADD(from_errno, test_from_errno_negative);
    TST_ADD(from_errno, test_from_errno_zero);
    TST_ADD(from_errno, test_from_errno_always_a_known_failure);
    TST_ADD(from_errno, test_from_errno_unknown);

    return tst_run();
}
