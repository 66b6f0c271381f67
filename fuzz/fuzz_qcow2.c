/*
 * libFuzzer harness for the QCOW2 driver.
 *
 * Each input is an image file, opened read-only as "qcow2" and by probing, and read
 * every way a reader can, then opened writable, written, flushed, checked, repaired and
 * reopened (fuzz_common.h).  Backing files are not allowed
 * (RT_VD_OPEN_ALLOW_BACKING is not passed), so an input naming one must be refused
 * cleanly, never followed.
 */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_image(data, size);
    fuzz_open_read_only(path, "qcow2");
    fuzz_open_read_only(path, NULL);
    if (getenv("FUZZ_NO_WRITE") == NULL) {
        fuzz_image(data, size); /* the read-only opens changed nothing; be sure */
        fuzz_writable(path, "qcow2");
    }
    return 0;
}
