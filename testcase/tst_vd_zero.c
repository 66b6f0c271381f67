/*
 * Write zeroes and discard, every format:
 *
 *   - a model run per image shape (raw; QCOW2 v3 and v2, alone and over a backing file;
 *     VDI; cached and uncached): random writes, zeroes (with and without
 *     RT_VD_ZERO_MAY_UNMAP), discards and flushes at every alignment, the whole disk
 *     read back after each and compared with the model (a discard's range may read as
 *     before or as zeros, nothing else); then reopened, checked by rt_vd_check and
 *     qemu-img check, and converted by qemu-img to raw, which must equal the model;
 *   - the queued forms ordered against writes and reads in flight with them;
 *   - QCOW2 as qemu-img sees it: zeroed clusters are zero clusters (kept allocated
 *     without MAY_UNMAP), discarded space goes back to the file system, backing data is
 *     hidden, clusters shared with an internal snapshot keep the snapshot's data;
 *   - the refusals: read-only, out of range, unknown flags, NULL callback.
 */
#include "tst_common.h"
#include "tst_files.h"
#include "tst_qemu_img.h"

#include <rt/file.h>
#include <rt/vd.h>

#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>

#define KIB 1024u
#define MIB (1024u * 1024u)
#define DISK (8u * MIB)
#define BACKING_BYTE 0xbb
#define ROUNDS 160

static uint8_t model[DISK], back[DISK], before[DISK];
static uint64_t prng_state = 0x2545f4914f6cdd1du;

static uint64_t prng(void)
{
    prng_state ^= prng_state << 13;
    prng_state ^= prng_state >> 7;
    prng_state ^= prng_state << 17;
    return prng_state;
}

struct shape {
    const char *name;
    const char *format;
    uint32_t version;
    uint32_t unit;
    bool backing;
};

static const struct shape shapes[] = {
    {"raw", "raw", 0, 64 * KIB, false},
    {"qcow2 v3", "qcow2", 3, 64 * KIB, false},
    {"qcow2 v2", "qcow2", 2, 64 * KIB, false},
    {"qcow2 v3 over a backing file", "qcow2", 3, 64 * KIB, true},
    {"qcow2 v2 over a backing file", "qcow2", 2, 64 * KIB, true},
    {"qcow2 v3, 512-byte clusters", "qcow2", 3, 512, false},
    {"vdi", "vdi", 0, 1 * MIB, false},
};

static bool uncached_supported(void)
{
    char path[600];
    tst_path(path, sizeof path, "direct-probe");
    rt_file_t file;
    int rc = rt_file_open(&file, path,
                          RT_FILE_READWRITE | RT_FILE_OPEN_CREATE | RT_FILE_NO_CACHE, 0);
    if (rc == RT_OK)
        rt_file_close(file);
    unlink(path);
    return rc == RT_OK;
}

/* A raw file of DISK bytes of BACKING_BYTE. */
static void make_backing(const char *path)
{
    unlink(path);
    rt_vd_create_opts_t opts = {.size = DISK};
    TST_RC_FATAL(rt_vd_create(path, "raw", &opts, NULL), RT_OK);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "raw", 0, NULL), RT_OK);
    memset(back, BACKING_BYTE, DISK);
    TST_RC(rt_vd_write(vd, 0, back, DISK), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
}

static void make_shape(const struct shape *sh, const char *path, const char *backing_path)
{
    unlink(path);
    rt_vd_create_opts_t opts = {.size = DISK, .version = sh->version};
    if (strcmp(sh->format, "raw") != 0)
        opts.block_size = sh->unit;
    if (sh->backing) {
        make_backing(backing_path);
        opts.backing_file = backing_path;
        opts.backing_format = "raw";
    }
    rt_vd_error_t err;
    int rc = rt_vd_create(path, sh->format, &opts, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  create %s: %s", sh->name, err.msg);
    TST_RC_FATAL(rc, RT_OK);
    memset(model, sh->backing ? BACKING_BYTE : 0, DISK);
}

static uint32_t open_flags(const struct shape *sh, bool uncached)
{
    return (sh->backing ? RT_VD_OPEN_ALLOW_BACKING : 0) | (uncached ? RT_VD_OPEN_NO_CACHE : 0);
}

/* An offset or length at a random alignment: a whole number of units, of sectors, or
 * any byte. */
static uint64_t random_place(uint64_t limit, uint32_t unit)
{
    uint64_t v = prng() % limit;
    switch (prng() % 3) {
    case 0: return v / unit * unit;
    case 1: return v / 512 * 512;
    default: return v;
    }
}

/* The whole disk equals the model; on a mismatch says where, once. */
static bool disk_matches(rt_vd_t vd, const char *what, const char *shape, int round)
{
    int rc = rt_vd_read(vd, 0, back, DISK);
    TST_RC(rc, RT_OK);
    if (rc != RT_OK)
        return false;
    for (uint64_t i = 0; i < DISK; i++)
        if (back[i] != model[i]) {
            fprintf(stderr, "\n  %s, round %d (%s): byte 0x%llx is 0x%02x, the model has 0x%02x",
                    shape, round, what, (unsigned long long)i, back[i], model[i]);
            CU_FAIL("the disk differs from the model");
            return false;
        }
    return true;
}

/* qemu-img's raw conversion of the image equals the model. */
static void qemu_converts_to_model(const char *path, const char *format)
{
    if (access(QEMU_IMG, X_OK) != 0)
        return;
    char raw[600], cmd[1400];
    tst_path(raw, sizeof raw, "converted.raw");
    snprintf(cmd, sizeof cmd, "%s convert -f %s -O raw '%s' '%s'", QEMU_IMG, format, path, raw);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    uint64_t size = 0;
    uint8_t *data = slurp(raw, &size);
    CU_ASSERT_EQUAL(size, DISK);
    if (size == DISK && memcmp(data, model, DISK) != 0) {
        uint64_t i = 0;
        while (data[i] == model[i])
            i++;
        fprintf(stderr, "\n  %s: qemu-img reads 0x%02x at 0x%llx, the model has 0x%02x", path,
                data[i], (unsigned long long)i, model[i]);
        CU_FAIL("qemu-img reads other data than the model");
    }
    free(data);
    unlink(raw);
}

static void model_run(const struct shape *sh, bool uncached)
{
    char path[600], backing[600], label[128];
    tst_path(path, sizeof path, "model.img");
    tst_path(backing, sizeof backing, "model-backing.raw");
    snprintf(label, sizeof label, "%s%s", sh->name, uncached ? ", uncached" : "");
    make_shape(sh, path, backing);
    rt_vd_t vd;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, path, sh->format, open_flags(sh, uncached), &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  open %s: %s", label, err.msg);
    TST_RC_FATAL(rc, RT_OK);
    uint64_t span = 3ull * sh->unit < DISK / 2 ? 3ull * sh->unit : DISK / 2;
    for (int round = 0; round < ROUNDS; round++) {
        uint64_t off = random_place(DISK, sh->unit);
        uint64_t len = 1 + random_place(span, sh->unit);
        if (len > DISK - off)
            len = DISK - off;
        unsigned kind = (unsigned)(prng() % 20);
        const char *what;
        if (kind < 8) {
            what = "write";
            for (uint64_t i = 0; i < len; i++)
                model[off + i] = (uint8_t)((round * 7 + i) | 1);
            TST_RC(rt_vd_write(vd, off, model + off, len), RT_OK);
        } else if (kind < 13) {
            uint32_t flags = kind & 1 ? RT_VD_ZERO_MAY_UNMAP : 0;
            what = flags ? "write zeroes, may unmap" : "write zeroes";
            memset(model + off, 0, len);
            TST_RC(rt_vd_write_zeroes(vd, off, len, flags), RT_OK);
        } else if (kind < 17) {
            what = "discard";
            memcpy(before, model, DISK);
            TST_RC(rt_vd_discard(vd, off, len), RT_OK);
            /* Advisory: each byte of the range as before, or zero; the rest untouched. */
            TST_RC(rt_vd_read(vd, 0, back, DISK), RT_OK);
            for (uint64_t i = off; i < off + len; i++)
                if (back[i] == 0)
                    model[i] = 0;
        } else {
            what = "flush";
            TST_RC(rt_vd_flush(vd), RT_OK);
        }
        if (!disk_matches(vd, what, label, round))
            break;
    }
    TST_RC(rt_vd_close(vd), RT_OK);

    TST_RC_FATAL(rt_vd_open(&vd, path, sh->format, open_flags(sh, false), &err), RT_OK);
    disk_matches(vd, "after reopening", label, ROUNDS);
    if (strcmp(sh->format, "raw") != 0) {
        rt_vd_check_result_t res;
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        if (res.corruptions + res.leaks)
            fprintf(stderr, "\n  %s: check finds %s", label, res.first_problem);
        CU_ASSERT_EQUAL(res.corruptions, 0);
        CU_ASSERT_EQUAL(res.leaks, 0);
    }
    TST_RC(rt_vd_close(vd), RT_OK);
    if (strcmp(sh->format, "raw") != 0 && access(QEMU_IMG, X_OK) == 0)
        CU_ASSERT_EQUAL(qemu_img_clean_as(path, sh->format), 1);
    qemu_converts_to_model(path, sh->format);
    unlink(path);
    unlink(backing);
}

static void test_model_cached(void)
{
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        model_run(&shapes[i], false);
}

static void test_model_uncached(void)
{
    if (!uncached_supported()) {
        fprintf(stderr, "\n  (the scratch file system refuses O_DIRECT: uncached runs left out)");
        return;
    }
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        model_run(&shapes[i], true);
}

/* ---------------------------------------------------------------------------------- */
/* Queued. */

struct done_log {
    int order[16];
    int status[16];
    int count;
};

struct done_ref {
    struct done_log *log;
    int id;
};

static void logged(void *user, int status)
{
    struct done_ref *r = user;
    r->log->order[r->log->count] = r->id;
    r->log->status[r->id] = status;
    r->log->count++;
}

/* Runs @a n requests started together; each must succeed. */
static void run_all(rt_vd_queue_t q, struct done_log *log, int n)
{
    while (log->count < n)
        TST_RC_FATAL(rt_vd_queue_run(q, 1, 10000, NULL), RT_OK);
    for (int i = 0; i < n; i++)
        TST_RC(log->status[i], RT_OK);
}

static void expect_read(const uint8_t *got, uint64_t len, const char *shape, const char *what)
{
    if (memcmp(got, model, len) == 0)
        return;
    uint64_t i = 0;
    while (got[i] == model[i])
        i++;
    fprintf(stderr, "\n  %s, %s: byte 0x%llx read 0x%02x, expected 0x%02x", shape, what,
            (unsigned long long)i, got[i], model[i]);
    CU_FAIL("the queued requests were not ordered");
}

/* Requests started together, each overlapping the one before: a write, a zeroing over
 * part of it and a read of it all see each other in that order (a zero request waits
 * for what it overlaps, and what overlaps it waits for it); then the same with a write
 * into the zeroed part first.  Twice: into new units, then over allocated ones (whose
 * plain writes would not otherwise wait). */
static void test_queued_order(void)
{
    const struct shape *picks[] = {&shapes[0], &shapes[1], &shapes[3], &shapes[6]};
    for (size_t p = 0; p < sizeof picks / sizeof picks[0]; p++) {
        const struct shape *sh = picks[p];
        char path[600], backing[600];
        tst_path(path, sizeof path, "queued.img");
        tst_path(backing, sizeof backing, "queued-backing.raw");
        make_shape(sh, path, backing);
        rt_vd_t vd;
        TST_RC_FATAL(rt_vd_open(&vd, path, sh->format, open_flags(sh, false), NULL), RT_OK);
        rt_vd_queue_t q;
        TST_RC_FATAL(rt_vd_queue_create(&q, 16), RT_OK);
        uint64_t unit = sh->unit, span = 3 * unit;
        static uint8_t a[3 * MIB], b[3 * MIB], got[3 * MIB];
        for (int pass = 0; pass < 2; pass++) {
            memset(a, 0x11 + pass, span);
            memset(b, 0x22 + pass, span);
            uint64_t zlo = unit / 2, zlen = unit * 2, blo = unit + unit / 4, blen = unit / 4;
            uint32_t flags = pass ? RT_VD_ZERO_MAY_UNMAP : 0;
            rt_iovec_t ia = {a, span}, ib = {b, blen}, ig = {got, span};
            struct done_log log = {{0}, {0}, 0};
            struct done_ref refs[3] = {{&log, 0}, {&log, 1}, {&log, 2}};
            TST_RC(rt_vd_queue_write(q, vd, 0, &ia, 1, logged, &refs[0]), RT_OK);
            TST_RC(rt_vd_queue_write_zeroes(q, vd, zlo, zlen, flags, logged, &refs[1]), RT_OK);
            TST_RC(rt_vd_queue_read(q, vd, 0, &ig, 1, logged, &refs[2]), RT_OK);
            run_all(q, &log, 3);
            memcpy(model, a, span);
            memset(model + zlo, 0, zlen);
            expect_read(got, span, sh->name, pass ? "write, zero, read (allocated)"
                                                  : "write, zero, read (new units)");
            log.count = 0;
            TST_RC(rt_vd_queue_write(q, vd, blo, &ib, 1, logged, &refs[0]), RT_OK);
            TST_RC(rt_vd_queue_write_zeroes(q, vd, blo + blen / 2, unit, flags, logged,
                                            &refs[1]),
                   RT_OK);
            TST_RC(rt_vd_queue_read(q, vd, 0, &ig, 1, logged, &refs[2]), RT_OK);
            run_all(q, &log, 3);
            memcpy(model + blo, b, blen);
            memset(model + blo + blen / 2, 0, unit);
            expect_read(got, span, sh->name, "write into the zeros, zero over it, read");
        }
        /* A discard queued behind a flush completes; a flush after it too. */
        struct done_log log = {{0}, {0}, 0};
        struct done_ref refs[2] = {{&log, 0}, {&log, 1}};
        TST_RC(rt_vd_queue_discard(q, vd, 0, span, logged, &refs[0]), RT_OK);
        TST_RC(rt_vd_queue_flush(q, vd, logged, &refs[1]), RT_OK);
        run_all(q, &log, 2);
        TST_RC(rt_vd_queue_destroy(q), RT_OK);
        TST_RC(rt_vd_close(vd), RT_OK);
        unlink(path);
        unlink(backing);
    }
}

/* ---------------------------------------------------------------------------------- */
/* QCOW2 as qemu-img sees it. */

/* qemu-img map --output=json of @a path, one line per extent, into @a out. */
static bool qemu_map(const char *path, char *out, size_t room)
{
    char cmd[1400], log[600];
    tst_path(log, sizeof log, "map.json");
    snprintf(cmd, sizeof cmd, "%s map -f qcow2 --output=json '%s' >'%s'", QEMU_IMG, path, log);
    if (system(cmd) != 0)
        return false;
    FILE *f = fopen(log, "r");
    if (f == NULL)
        return false;
    size_t n = fread(out, 1, room - 1, f);
    out[n] = '\0';
    fclose(f);
    unlink(log);
    return true;
}

/* Does every extent of qemu-img's JSON map that overlaps [lo, hi) say @a what (its
 * text after "depth": 0, ), and do they cover the range? */
static bool map_says(const char *map, uint64_t lo, uint64_t hi, const char *what)
{
    uint64_t covered = 0;
    for (const char *line = map; line != NULL && *line; line = strchr(line, '\n')) {
        while (*line == '\n' || *line == '[')
            line++;
        unsigned long long start, length;
        int depth, used = 0;
        if (sscanf(line, "{ \"start\": %llu, \"length\": %llu, \"depth\": %d, %n", &start,
                   &length, &depth, &used) != 3 || used == 0)
            continue;
        if (start + length <= lo || start >= hi)
            continue;
        if (strncmp(line + used, what, strlen(what)) != 0)
            return false;
        covered += (start + length < hi ? start + length : hi) - (start > lo ? start : lo);
    }
    return covered == hi - lo;
}

static uint64_t allocated_bytes(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512u : 0;
}

static void test_qcow2_as_qemu_sees_it(void)
{
    if (access(QEMU_IMG, X_OK) != 0) {
        fprintf(stderr, "\n  (no qemu-img: the QCOW2 oracle checks are left out)");
        return;
    }
    char path[600], map[8192];
    tst_path(path, sizeof path, "qemu-view.qcow2");
    make_shape(&shapes[1], path, NULL);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    memset(back, 0x5a, 4 * MIB);
    TST_RC(rt_vd_write(vd, 0, back, 4 * MIB), RT_OK);
    TST_RC(rt_vd_flush(vd), RT_OK);
    uint64_t full = allocated_bytes(path);
    /* Zeros kept allocated over the first MiB, dropped over the second, a discard of
     * the third: three kinds of extent for qemu-img. */
    TST_RC(rt_vd_write_zeroes(vd, 0, MIB, 0), RT_OK);
    TST_RC(rt_vd_write_zeroes(vd, MIB, MIB, RT_VD_ZERO_MAY_UNMAP), RT_OK);
    TST_RC(rt_vd_discard(vd, 2 * MIB, MIB), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT(qemu_map(path, map, sizeof map));
    /* Kept: zero, its clusters still there (an offset); dropped: not present. */
    bool ok = map_says(map, 0, MIB, "\"present\": true, \"zero\": true, \"data\": false, \"offset\"") &&
              map_says(map, MIB, 3 * MIB, "\"present\": false, \"zero\": true, \"data\": false}") &&
              map_says(map, 3 * MIB, 4 * MIB, "\"present\": true, \"zero\": false, \"data\": true");
    if (!ok)
        fprintf(stderr, "\n  qemu-img map says:\n%s", map);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(qemu_img_clean_as(path, "qcow2"), 1);
    /* The two dropped MiB went back to the file system (punched at the commit). */
    uint64_t now = allocated_bytes(path);
    if (now + 2 * MIB > full)
        fprintf(stderr, "\n  allocated %llu bytes before, %llu after dropping 2 MiB",
                (unsigned long long)full, (unsigned long long)now);
    CU_ASSERT(now + 2 * MIB <= full);
    memset(model, 0, DISK);
    memset(model + 3 * MIB, 0x5a, MIB);
    qemu_converts_to_model(path, "qcow2");
    unlink(path);
}

/* Over a backing file: zeros hide its data, a v3 discard too. */
static void test_qcow2_hides_backing(void)
{
    char path[600], backing[600];
    tst_path(path, sizeof path, "over.qcow2");
    tst_path(backing, sizeof backing, "over-backing.raw");
    make_shape(&shapes[3], path, backing);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
    TST_RC(rt_vd_write_zeroes(vd, 0, MIB, 0), RT_OK);
    TST_RC(rt_vd_write_zeroes(vd, MIB, MIB, RT_VD_ZERO_MAY_UNMAP), RT_OK);
    TST_RC(rt_vd_discard(vd, 2 * MIB, MIB), RT_OK);
    memset(model, 0, 3 * MIB);
    TST_RC(rt_vd_read(vd, 0, back, DISK), RT_OK);
    CU_ASSERT_EQUAL(memcmp(back, model, DISK), 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(qemu_img_clean_as(path, "qcow2"), 1);
    qemu_converts_to_model(path, "qcow2");
    unlink(path);
    unlink(backing);
}

/* Clusters shared with an internal snapshot (qemu-img made it): zeroing and discarding
 * them in the active image leaves the snapshot's data, and every refcount right. */
static void test_qcow2_snapshot_keeps_its_data(void)
{
    if (access(QEMU_IMG, X_OK) != 0) {
        fprintf(stderr, "\n  (no qemu-img: the snapshot case is left out)");
        return;
    }
    char path[600], cmd[1600], snap[600];
    tst_path(path, sizeof path, "snap.qcow2");
    tst_path(snap, sizeof snap, "snap.raw");
    make_shape(&shapes[1], path, NULL);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    memset(back, 0x77, 2 * MIB);
    TST_RC(rt_vd_write(vd, 0, back, 2 * MIB), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    snprintf(cmd, sizeof cmd, "%s snapshot -c s1 '%s'", QEMU_IMG, path);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    TST_RC(rt_vd_write_zeroes(vd, 0, MIB, 0), RT_OK);
    TST_RC(rt_vd_discard(vd, MIB, MIB), RT_OK);
    rt_vd_check_result_t res;
    TST_RC(rt_vd_flush(vd), RT_OK);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    if (res.corruptions + res.leaks)
        fprintf(stderr, "\n  check finds %s", res.first_problem);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(qemu_img_clean_as(path, "qcow2"), 1);
    memset(model, 0, DISK);
    qemu_converts_to_model(path, "qcow2");
    snprintf(cmd, sizeof cmd, "%s convert -l snapshot.name=s1 -O raw '%s' '%s'", QEMU_IMG, path,
             snap);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    uint64_t size = 0;
    uint8_t *data = slurp(snap, &size);
    memset(model, 0x77, 2 * MIB);
    CU_ASSERT(size == DISK && memcmp(data, model, DISK) == 0);
    free(data);
    unlink(snap);
    unlink(path);
}

/* ---------------------------------------------------------------------------------- */
/* Refusals. */

static void test_refusals(void)
{
    char path[600];
    tst_path(path, sizeof path, "refusals.qcow2");
    make_shape(&shapes[1], path, NULL);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    TST_RC(rt_vd_write_zeroes(vd, 0, 512, 0x2), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_write_zeroes(vd, DISK - 512, 1024, 0), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_discard(vd, DISK + 1, 0), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_discard(vd, UINT64_MAX, 2), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_write_zeroes(vd, DISK, 0, 0), RT_OK); /* nothing, at the end */
    TST_RC(rt_vd_write_zeroes(RT_VD_NIL, 0, 512, 0), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_discard(RT_VD_NIL, 0, 512), RT_ERR_INVALID_HANDLE);
    rt_vd_queue_t q;
    TST_RC_FATAL(rt_vd_queue_create(&q, 4), RT_OK);
    TST_RC(rt_vd_queue_write_zeroes(q, vd, 0, 512, 0, NULL, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_queue_discard(q, vd, DISK, 1, logged, NULL), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_queue_write_zeroes(q, vd, 0, 512, 4, logged, NULL), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_write_zeroes(vd, 0, 512, 0), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_discard(vd, 0, 512), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

/* ---------------------------------------------------------------------------------- */
/* A raw image on a block device (a loop device over a file): its size is the device's,
 * and zeroes and discards of ranges that are not whole device blocks work (fallocate
 * takes only whole blocks there: the engine writes the partial ones). */

static char loop_dev[64];

static bool loop_attach(const char *file)
{
    char cmd[1400], out[600];
    tst_path(out, sizeof out, "loop.name");
    snprintf(cmd, sizeof cmd, "losetup -f --show '%s' >'%s' 2>/dev/null", file, out);
    if (geteuid() != 0 || system(cmd) != 0)
        return false;
    FILE *f = fopen(out, "r");
    bool ok = f != NULL && fgets(loop_dev, sizeof loop_dev, f) != NULL;
    if (f != NULL)
        fclose(f);
    unlink(out);
    loop_dev[strcspn(loop_dev, "\n")] = '\0';
    return ok && loop_dev[0] == '/';
}

static void loop_detach(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "losetup -d '%s'", loop_dev);
    if (system(cmd) != 0)
        fprintf(stderr, "\n  cannot detach %s", loop_dev);
}

static void test_block_device(void)
{
    char file[600];
    tst_path(file, sizeof file, "loop-backing.img");
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CU_ASSERT_FATAL(fd >= 0 && ftruncate(fd, 8 * MIB) == 0);
    close(fd);
    if (!loop_attach(file)) {
        /* Not counted: the test program's other tests still run and count. */
        printf("\n  note: no loop device here (needs root and losetup): block device "
               "checks left out ");
        unlink(file);
        return;
    }
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, loop_dev, "raw", 0, &err);
    TST_RC(rc, RT_OK);
    if (rc != RT_OK) { /* the device is detached whatever happened */
        loop_detach();
        unlink(file);
        return;
    }
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_EQUAL(info.virtual_size, 8 * MIB);
    static uint8_t data[2 * MIB], got[2 * MIB];
    memset(data, 0x5a, sizeof data);
    TST_RC(rt_vd_write(vd, 0, data, sizeof data), RT_OK);
    TST_RC(rt_vd_write_zeroes(vd, 100, 1000, 0), RT_OK);                      /* inside a block */
    TST_RC(rt_vd_write_zeroes(vd, 5000, 70000, RT_VD_ZERO_MAY_UNMAP), RT_OK); /* both ends */
    TST_RC(rt_vd_discard(vd, 200000, 100000), RT_OK);                         /* advisory */
    memset(data + 100, 0, 1000);
    memset(data + 5000, 0, 70000);
    TST_RC(rt_vd_read(vd, 0, got, sizeof got), RT_OK);
    /* The discard may have dropped its whole blocks (zeros) or kept them. */
    CU_ASSERT(memcmp(got, data, 200000) == 0);
    CU_ASSERT(memcmp(got + 300000, data + 300000, sizeof data - 300000) == 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    loop_detach();
    unlink(file);
}

int main(void)
{
    CU_pSuite suite = tst_suite("write zeroes and discard");
    TST_ADD(suite, test_refusals);
    TST_ADD(suite, test_model_cached);
    TST_ADD(suite, test_model_uncached);
    TST_ADD(suite, test_queued_order);
    TST_ADD(suite, test_qcow2_as_qemu_sees_it);
    TST_ADD(suite, test_qcow2_hides_backing);
    TST_ADD(suite, test_qcow2_snapshot_keeps_its_data);
    TST_ADD(suite, test_block_device);
    return tst_run();
}
