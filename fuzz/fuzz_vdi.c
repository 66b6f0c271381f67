/*
 * libFuzzer harness for the VDI driver.
 *
 * Each input is an image file.  It is opened read-only as "vdi" and by probing and
 * read every way a reader can, then (when its blocks are small enough to keep a run
 * fast) written, checked, repaired and reopened (fuzz_common.h).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_image(data, size);
    fuzz_open_read_only(path, "vdi");
    fuzz_open_read_only(path, NULL);
    if (getenv("FUZZ_NO_WRITE") == NULL && writable_pass_is_cheap(data, size)) {
        fuzz_image(data, size);
        fuzz_writable(path, "vdi");
    }
    return 0;
}
