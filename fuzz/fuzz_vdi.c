/*
 * libFuzzer harness for the VDI driver.
 *
 * Each input is an image file.  It is opened read-only as "vdi" and by probing and
 * read every way a reader can (fuzz_common.h).  When it also opens writable (and its
 * blocks are small enough to keep a run fast), the harness writes three small ranges
 * (allocating blocks on top of whatever map the input holds), flushes, checks and
 * repairs, and then demands what any valid image owes: the check finds no corruption,
 * the repair leaves no leak, the bytes read back are the bytes written, and the file
 * reopens as a valid VDI image holding them.
 */
#include "fuzz_common.h"

#define OFF_DATA       0x158u
#define OFF_BLOCK_SIZE 0x178u
#define OFF_ALLOCATED  0x184u

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Where a writable run would put its new blocks: skip inputs that would allocate far
 * out in the file or write huge blocks (slow, and tells nothing new). */
static int writable_pass_is_cheap(const uint8_t *data, size_t size)
{
    if (size < 512)
        return 0;
    uint64_t block = le32(data + OFF_BLOCK_SIZE);
    uint64_t end = le32(data + OFF_DATA) + (le32(data + OFF_ALLOCATED) + 3u) * block;
    return block <= (1u << 20) && end <= (256u << 20);
}

static void fail(const char *what, int rc)
{
    fprintf(stderr, "writable pass: %s: %s (%d)\n", what, rt_status_name(rc), rc);
    abort();
}

static void fuzz_writable(const char *path)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    if (rt_vd_open(&vd, path, "vdi", 0, &err) != RT_OK)
        return;
    rt_vd_info_t info;
    int rc = rt_vd_get_info(vd, &info);
    if (rc != RT_OK)
        fail("get_info", rc);
    uint64_t size = info.virtual_size;
    enum { CHUNK = 4096 };
    static uint8_t pattern[3][CHUNK], back[CHUNK];
    uint64_t offs[3] = {0, size / 2, size > CHUNK ? size - CHUNK : 0};
    uint64_t lens[3];
    int wrote = 0;
    for (int i = 0; i < 3; i++) {
        lens[i] = size - offs[i] < CHUNK ? size - offs[i] : CHUNK;
        /* The ranges must not overlap, or the later write wins the shared bytes. */
        for (int j = 0; j < i; j++)
            if (lens[j] > 0 && offs[i] < offs[j] + lens[j] && offs[j] < offs[i] + lens[i])
                lens[i] = 0;
        memset(pattern[i], 0xa1 + i, sizeof pattern[i]);
        if (lens[i] == 0)
            continue;
        rc = rt_vd_write(vd, offs[i], pattern[i], (size_t)lens[i]);
        if (rc == RT_ERR_VD_CORRUPT || rc == RT_ERR_DISK_FULL || rc == RT_ERR_NO_MEMORY) {
            /* The map is full of leaked blocks (allocated == blocks), or the host is: a
             * refusal, not damage; the rest must still hold. */
            lens[i] = 0;
            continue;
        }
        if (rc != RT_OK)
            fail("write", rc);
        wrote++;
    }
    if ((rc = rt_vd_flush(vd)) != RT_OK)
        fail("flush", rc);

    rt_vd_check_result_t res;
    if ((rc = rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res)) != RT_OK)
        fail("check -r leaks", rc);
    if (res.corruptions != 0) {
        fprintf(stderr, "writable pass: check found corruption: %s\n", res.first_problem);
        abort();
    }
    if ((rc = rt_vd_check(vd, 0, &res)) != RT_OK)
        fail("second check", rc);
    if (res.corruptions != 0 || res.leaks != 0) {
        fprintf(stderr, "writable pass: after repair %llu corruptions, %llu leaks: %s\n",
                (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                res.first_problem);
        abort();
    }
    for (int i = 0; i < 3; i++) {
        if (lens[i] == 0)
            continue;
        if ((rc = rt_vd_read(vd, offs[i], back, (size_t)lens[i])) != RT_OK)
            fail("read back", rc);
        if (memcmp(back, pattern[i], (size_t)lens[i]) != 0) {
            fprintf(stderr, "writable pass: range %d (%llu+%llu) reads back different\n", i,
                    (unsigned long long)offs[i], (unsigned long long)lens[i]);
            abort();
        }
    }
    if ((rc = rt_vd_close(vd)) != RT_OK)
        fail("close", rc);

    /* What we left behind is a valid image holding what we wrote. */
    if ((rc = rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err)) != RT_OK) {
        fprintf(stderr, "writable pass: the image no longer opens: %s: %s\n", rt_status_name(rc),
                err.msg);
        abort();
    }
    for (int i = 0; i < 3; i++) {
        if (lens[i] == 0)
            continue;
        if ((rc = rt_vd_read(vd, offs[i], back, (size_t)lens[i])) != RT_OK)
            fail("read after reopen", rc);
        if (memcmp(back, pattern[i], (size_t)lens[i]) != 0) {
            fprintf(stderr, "writable pass: range %d differs after reopen\n", i);
            abort();
        }
    }
    if ((rc = rt_vd_check(vd, 0, &res)) != RT_OK)
        fail("check after reopen", rc);
    if (res.corruptions != 0 || res.leaks != 0) {
        fprintf(stderr, "writable pass: after reopen %llu corruptions, %llu leaks: %s\n",
                (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                res.first_problem);
        abort();
    }
    rt_vd_close(vd);
    (void)wrote;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_image(data, size);
    fuzz_open_read_only(path, "vdi");
    fuzz_open_read_only(path, NULL);
    if (getenv("FUZZ_VDI_NO_WRITE") == NULL && writable_pass_is_cheap(data, size)) {
        fuzz_image(data, size);
        fuzz_writable(path);
    }
    return 0;
}
