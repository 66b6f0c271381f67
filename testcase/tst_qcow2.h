/*
 * The QCOW2 layout as the specification gives it (docs/interop/qcow2.txt in QEMU),
 * written here independently of src/vd/qcow2.h so that the tests that patch images
 * field by field do not share the driver's mistakes.  Header-only, like tst_common.h.
 */
#ifndef TST_QCOW2_H
#define TST_QCOW2_H

#include <rt/vd.h>

#include "tst_common.h"

/* Header fields (big-endian). */
enum {
    H_MAGIC = 0,
    H_VERSION = 4,
    H_BACKING_OFFSET = 8,
    H_BACKING_SIZE = 16,
    H_CLUSTER_BITS = 20,
    H_SIZE = 24,
    H_CRYPT = 32,
    H_L1_SIZE = 36,
    H_L1_OFFSET = 40,
    H_RT_OFFSET = 48,
    H_RT_CLUSTERS = 56,
    H_NB_SNAPSHOTS = 60,
    H_SNAPSHOTS_OFFSET = 64,
    H_INCOMPATIBLE = 72, /* version 3 from here */
    H_COMPATIBLE = 80,
    H_AUTOCLEAR = 88,
    H_REFCOUNT_ORDER = 96,
    H_HEADER_LENGTH = 100,
    H_COMPRESSION_TYPE = 104,
};

#define MAGIC            0x514649fbu
#define EXT_BACKING_FMT  0xe2792acau
#define EXT_FEATURE_NAME 0x6803f857u
#define EXT_BITMAPS      0x23852875u
#define AUTOCLEAR_BITS   1ull /* the bitmaps extension is valid */
#define COPIED           (1ull << 63)
#define COMPRESSED       (1ull << 62)
#define OFFSET_MASK      0x00fffffffffffe00ull

#define KIB (1024u)
#define MIB (1024u * 1024u)

/* Opens @a path for writing into *@a vd, expects check to find exactly one leak and no
 * corruption, and the repair to reclaim it; leaves the image open for what the caller
 * asserts next (in *@a res: the repair's result). */
static inline void tst_qcow2_repair_one_leak(const char *path, rt_vd_t *vd,
                                             rt_vd_check_result_t *res)
{
    rt_vd_error_t err;
    TST_RC_FATAL(rt_vd_open(vd, path, "qcow2", 0, &err), RT_OK);
    TST_RC(rt_vd_check(*vd, 0, res), RT_OK);
    CU_ASSERT_EQUAL(res->corruptions, 0);
    CU_ASSERT_EQUAL(res->leaks, 1);
    TST_RC(rt_vd_check(*vd, RT_VD_CHECK_REPAIR_LEAKS, res), RT_OK);
    CU_ASSERT_EQUAL(res->leaks_fixed, 1);
}

#endif /* TST_QCOW2_H */
