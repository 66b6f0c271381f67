/*
 * Writes a seed corpus for the fuzz harnesses: small valid images, made by the library
 * itself so the seeds follow the format as it is written today.
 *
 *   gen_seeds vdi DIR   dynamic and static VDI images, empty and with data, <= 64 KiB
 *   gen_seeds raw DIR   a few small raw files
 *   gen_seeds qcow2 DIR QCOW2 images (versions 2 and 3) with small clusters
 */
#include <rt/err.h>
#include <rt/vd.h>

#include <stdio.h>
#include <string.h>

static int made, failed;

static int create_v(const char *dir, const char *name, const char *format, uint64_t size,
                    uint32_t flags, uint32_t block_size, uint32_t version, const uint64_t *writes,
                    int nwrites)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    remove(path);
    rt_vd_create_opts_t opts = {
        .size = size, .flags = flags, .block_size = block_size, .version = version};
    rt_vd_error_t err;
    int rc = rt_vd_create(path, format, &opts, &err);
    if (rc != RT_OK) {
        fprintf(stderr, "%s: %s: %s\n", path, rt_status_name(rc), err.msg);
        failed++;
        return rc;
    }
    if (nwrites > 0) {
        rt_vd_t vd = RT_VD_NIL;
        if ((rc = rt_vd_open(&vd, path, format, 0, &err)) != RT_OK) {
            fprintf(stderr, "%s: %s: %s\n", path, rt_status_name(rc), err.msg);
            failed++;
            return rc;
        }
        uint8_t buf[1024];
        for (int i = 0; i < nwrites && rc == RT_OK; i++) {
            memset(buf, 0x30 + i, sizeof buf);
            rc = rt_vd_write(vd, writes[i], buf, sizeof buf);
        }
        int close_rc = rt_vd_close(vd);
        if (rc == RT_OK)
            rc = close_rc;
        if (rc != RT_OK) {
            fprintf(stderr, "%s: writing: %s\n", path, rt_status_name(rc));
            failed++;
            return rc;
        }
    }
    made++;
    return RT_OK;
}

static int create(const char *dir, const char *name, const char *format, uint64_t size,
                  uint32_t flags, uint32_t block_size, const uint64_t *writes, int nwrites)
{
    return create_v(dir, name, format, size, flags, block_size, 0, writes, nwrites);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s vdi|raw|qcow2 DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[2];
    if (strcmp(argv[1], "vdi") == 0) {
        static const uint64_t one[] = {0};
        static const uint64_t three[] = {4096 * 5 + 100, 0, 4096 * 15};
        static const uint64_t scattered[] = {4096 * 3, 4096 * 1, 4096 * 2, 4096 * 7};
        create(dir, "dyn-empty-64k.vdi", "vdi", 64 << 10, 0, 4096, NULL, 0);
        create(dir, "dyn-one-64k.vdi", "vdi", 64 << 10, 0, 4096, one, 1);
        create(dir, "dyn-three-64k.vdi", "vdi", 64 << 10, 0, 4096, three, 3);
        create(dir, "dyn-scattered-32k.vdi", "vdi", 32 << 10, 0, 4096, scattered, 4);
        create(dir, "dyn-odd-size.vdi", "vdi", 4096 * 3 + 512, 0, 4096, three + 1, 1);
        create(dir, "static-32k.vdi", "vdi", 32 << 10, RT_VD_CREATE_STATIC, 4096, NULL, 0);
        create(dir, "static-data-16k.vdi", "vdi", 16 << 10, RT_VD_CREATE_STATIC, 4096, one, 1);
        create(dir, "dyn-empty-1g.vdi", "vdi", 1ull << 30, 0, 0, NULL, 0);
        create(dir, "dyn-empty-8m-64k.vdi", "vdi", 8 << 20, 0, 64 << 10, NULL, 0);
    } else if (strcmp(argv[1], "raw") == 0) {
        static const uint64_t some[] = {0, 3000};
        create(dir, "raw-512.img", "raw", 512, 0, 0, NULL, 0);
        create(dir, "raw-8k-data.img", "raw", 8192, 0, 0, some, 2);
        create(dir, "raw-64k-sparse.img", "raw", 64 << 10, 0, 0, NULL, 0);
        create(dir, "raw-4k-static.img", "raw", 4096, RT_VD_CREATE_STATIC, 0, some, 1);
    } else if (strcmp(argv[1], "qcow2") == 0) {
        static const uint64_t some[] = {0, 5000, 60000};
        create_v(dir, "v3-empty.qcow2", "qcow2", 64 << 10, 0, 512, 3, NULL, 0);
        create_v(dir, "v3-data.qcow2", "qcow2", 64 << 10, 0, 512, 3, some, 3);
        create_v(dir, "v2-data.qcow2", "qcow2", 64 << 10, 0, 512, 2, some, 2);
        create_v(dir, "v3-4k-data.qcow2", "qcow2", 256 << 10, 0, 4096, 3, some, 3);
        create_v(dir, "v3-big-empty.qcow2", "qcow2", 1ull << 30, 0, 4096, 3, NULL, 0);
    } else {
        fprintf(stderr, "unknown driver '%s'\n", argv[1]);
        return 2;
    }
    if (failed > 0)
        return 1;
    printf("%d %s seeds in %s\n", made, argv[1], dir);
    return 0;
}
