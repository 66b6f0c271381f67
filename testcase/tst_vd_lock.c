/*
 * Image locks (RT_VD_OPEN_FORCE_SHARE and the OFD locks every other open takes):
 *
 *   - one writer or many readers: a second writer, a reader beside a writer and a
 *     writer beside readers are refused with RT_ERR_VD_LOCKED and a message naming the
 *     lock, in one process (two handles) and across processes;
 *   - force-share reads beside a writer, and is refused on a writable open;
 *   - an overlay's writer holds its backing file as a reader: a writer of the backing
 *     file is refused while it is open;
 *   - a holder killed with SIGKILL leaves no lock behind;
 *   - QEMU sees our locks: qemu-img info is refused beside our writer, and reads with -U.
 */
#include "tst_common.h"
#include "tst_files.h"
#include "tst_qemu_img.h"

#include <rt/vd.h>

#include <signal.h>
#include <sys/wait.h>

#define DISK (1u << 20)

static void make(const char *path, const char *format, const char *backing)
{
    unlink(path);
    rt_vd_create_opts_t opts = {
        .size = DISK, .backing_file = backing, .backing_format = backing ? "raw" : NULL};
    TST_RC_FATAL(rt_vd_create(path, format, &opts, NULL), RT_OK);
}

static void test_one_writer_or_many_readers(void)
{
    char path[600];
    tst_path(path, sizeof path, "lock.qcow2");
    make(path, "qcow2", NULL);
    rt_vd_t w, r1, r2, other;
    rt_vd_error_t err;
    TST_RC_FATAL(rt_vd_open(&w, path, "qcow2", 0, NULL), RT_OK);
    TST_RC(rt_vd_open(&other, path, "qcow2", 0, &err), RT_ERR_VD_LOCKED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "lock"));
    CU_ASSERT_EQUAL(other, RT_VD_NIL);
    TST_RC(rt_vd_open(&other, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_ERR_VD_LOCKED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "\"write\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path)); /* which image, in a chain */
    TST_RC(rt_vd_open(&other, path, NULL, RT_VD_OPEN_READ_ONLY, &err), RT_ERR_VD_LOCKED);
    /* Force-share reads beside the writer, and is only for readers. */
    TST_RC(rt_vd_open(&other, path, "qcow2", RT_VD_OPEN_FORCE_SHARE, &err),
           RT_ERR_INVALID_PARAMETER);
    TST_RC_FATAL(
        rt_vd_open(&other, path, "qcow2", RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_FORCE_SHARE, &err),
        RT_OK);
    TST_RC(rt_vd_close(other), RT_OK);
    TST_RC(rt_vd_close(w), RT_OK);

    /* Readers share; a writer is refused beside them, and welcome after them. */
    TST_RC_FATAL(rt_vd_open(&r1, path, "qcow2", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_open(&r2, path, NULL, RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_open(&other, path, "qcow2", 0, &err), RT_ERR_VD_LOCKED);
    TST_RC(rt_vd_close(r1), RT_OK);
    TST_RC(rt_vd_open(&other, path, "qcow2", 0, &err), RT_ERR_VD_LOCKED);
    TST_RC(rt_vd_close(r2), RT_OK);
    TST_RC_FATAL(rt_vd_open(&w, path, "qcow2", 0, NULL), RT_OK);
    TST_RC(rt_vd_close(w), RT_OK);
    unlink(path);
}

static void test_backing_file_is_held_as_reader(void)
{
    char base[600], top[600];
    tst_path(base, sizeof base, "lock-base.raw");
    tst_path(top, sizeof top, "lock-top.qcow2");
    make(base, "raw", NULL);
    make(top, "qcow2", base);
    rt_vd_t t, b;
    TST_RC_FATAL(rt_vd_open(&t, top, "qcow2", RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
    rt_vd_error_t err;
    TST_RC(rt_vd_open(&b, base, "raw", 0, &err), RT_ERR_VD_LOCKED);
    TST_RC_FATAL(rt_vd_open(&b, base, "raw", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_close(b), RT_OK);
    TST_RC(rt_vd_close(t), RT_OK);
    /* A reader of the backing file does not stop an overlay's writer: it only reads it. */
    TST_RC_FATAL(rt_vd_open(&b, base, "raw", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC_FATAL(rt_vd_open(&t, top, "qcow2", RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
    TST_RC(rt_vd_close(t), RT_OK);
    TST_RC(rt_vd_close(b), RT_OK);
    unlink(top);
    unlink(base);
}

/* Another process holds the writer; its SIGKILL frees the lock. */
static void test_crashed_holder_leaves_no_lock(void)
{
    char path[600];
    tst_path(path, sizeof path, "lock-crash.vdi");
    make(path, "vdi", NULL);
    int ready[2];
    CU_ASSERT_EQUAL_FATAL(pipe(ready), 0);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        rt_vd_t vd;
        char ok = rt_vd_open(&vd, path, "vdi", 0, NULL) == RT_OK ? 'y' : 'n';
        if (write(ready[1], &ok, 1) != 1)
            _exit(2);
        pause();
        _exit(0);
    }
    close(ready[1]);
    char ok = 0;
    CU_ASSERT_EQUAL(read(ready[0], &ok, 1), 1);
    close(ready[0]);
    CU_ASSERT_EQUAL(ok, 'y');
    rt_vd_t vd;
    rt_vd_error_t err;
    TST_RC(rt_vd_open(&vd, path, "vdi", 0, &err), RT_ERR_VD_LOCKED);
    TST_RC(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_ERR_VD_LOCKED);
    kill(pid, SIGKILL);
    int status;
    CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, &err), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

static int run_quietly(const char *cmd)
{
    char line[1500];
    snprintf(line, sizeof line, "%s >/dev/null 2>&1", cmd);
    int status = system(line);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

static void test_qemu_honours_our_locks(void)
{
    if (access(QEMU_IMG, X_OK) != 0) {
        fprintf(stderr, "\n  qemu-img is not installed: QEMU's side not checked");
        return;
    }
    char path[600], cmd[1400];
    tst_path(path, sizeof path, "lock-qemu.qcow2");
    make(path, "qcow2", NULL);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    snprintf(cmd, sizeof cmd, "%s info '%s'", QEMU_IMG, path);
    CU_ASSERT_NOT_EQUAL(run_quietly(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s info -U '%s'", QEMU_IMG, path);
    CU_ASSERT_EQUAL(run_quietly(cmd), 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    snprintf(cmd, sizeof cmd, "%s info '%s'", QEMU_IMG, path); /* readers share */
    CU_ASSERT_EQUAL(run_quietly(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s resize '%s' +1M", QEMU_IMG, path);
    CU_ASSERT_NOT_EQUAL(run_quietly(cmd), 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    snprintf(cmd, sizeof cmd, "%s resize '%s' +1M", QEMU_IMG, path);
    CU_ASSERT_EQUAL(run_quietly(cmd), 0);
    unlink(path);
}

int main(void)
{
    CU_pSuite suite = tst_suite("image locks");
    TST_ADD(suite, test_one_writer_or_many_readers);
    TST_ADD(suite, test_backing_file_is_held_as_reader);
    TST_ADD(suite, test_crashed_holder_leaves_no_lock);
    TST_ADD(suite, test_qemu_honours_our_locks);
    return tst_run();
}
