/*
 * libFuzzer harness for the raw driver (and the probe that picks it).
 *
 * Each input is an image file, opened read-only as "raw" and by probing (which sends
 * inputs that look like VDI to the VDI driver).  A raw image accepts any bytes, so the
 * oracle is stronger than "no crash": what rt_vd_read returns must be the input itself.
 */
#include "fuzz_common.h"

static void check_contents(const char *path, const uint8_t *data, size_t size)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, path, "raw", RT_VD_OPEN_READ_ONLY, &err);
    if (rc != RT_OK) {
        fprintf(stderr, "raw refused %zu bytes: %s: %s\n", size, rt_status_name(rc), err.msg);
        abort();
    }
    rt_vd_info_t info;
    if (rt_vd_get_info(vd, &info) != RT_OK || info.virtual_size != size) {
        fprintf(stderr, "raw: virtual size %llu for a file of %zu bytes\n",
                (unsigned long long)info.virtual_size, size);
        abort();
    }
    uint8_t *back = malloc(size ? size : 1);
    if (back == NULL)
        abort();
    /* Odd offsets and lengths on purpose: the layer rounds and bounces. */
    size_t off = size > 7 ? size % 7 : 0;
    rc = rt_vd_read(vd, off, back, size - off);
    if (rc != RT_OK || memcmp(back, data + off, size - off) != 0) {
        fprintf(stderr, "raw: reading %zu+%zu: %s or different bytes\n", off, size - off,
                rt_status_name(rc));
        abort();
    }
    free(back);
    rt_vd_close(vd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_image(data, size);
    fuzz_open_read_only(path, "raw");
    fuzz_open_read_only(path, NULL);
    check_contents(path, data, size);
    if (getenv("FUZZ_NO_WRITE") == NULL) {
        fuzz_image(data, size);
        fuzz_writable(path, "raw");
    }
    return 0;
}
