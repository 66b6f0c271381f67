/*
 * Crash consistency of VDI and QCOW2 images under SIGKILL.
 *
 * Each round forks a child that opens a dynamic VDI image (or a QCOW2 one: the same
 * rounds run on both formats) and keeps dozens of writes in flight through the
 * asynchronous queue (random offsets and lengths, most of them
 * allocating blocks while the image fills), with a flush every few dozen completions.
 * The parent kills it with SIGKILL after a random delay (every other round counted from
 * the child's first completed flush, so that durable data is always at stake even on a
 * machine slow to fsync), then opens the image, checks
 * it (no corruption; leaks are what a crash during allocation leaves) and reads every
 * sector of the guest disk to prove that nothing the child was told is durable was lost.
 *
 * What makes the verdict exact:
 *
 *   - Every 512-byte sector a write carries describes itself: a magic, its own guest
 *     offset, the write's generation (its issue number, increasing across rounds) and
 *     the write's range, followed by bytes derived from (offset, generation).  So a
 *     sector read back tells which write put it there, and a sector from the wrong
 *     place, a torn one or garbage fails the comparison.
 *   - The child never has two overlapping writes in flight (as a guest's block layer
 *     never does), so among writes touching a sector, issue order is landing order.
 *   - A flush covers the writes whose callbacks ran before it started.  When a flush
 *     completes, the child sends the parent the writes that had completed before it
 *     started (in completion order), then a marker: "the first K are durable".  A
 *     report cut short by the kill is dropped, which only weakens the claim.
 *
 *   For sector s let D(s) be the newest generation among durable writes covering s (or
 *   what the previous round left there).  After the crash s must hold exactly D(s)'s
 *   bytes, or the bytes of a newer write covering s (completed or still in flight when
 *   the child died: either may have landed); zeros only if D(s) is none.  Anything
 *   older than D(s) is a lost write.
 *
 *        child                                   parent
 *        write g1..gN (<= 48 in flight)
 *        flush started after g1,g3 completed ...
 *        flush done  ---- "g1 g3 | durable 2" --> D(s) := max gen of durable writes
 *        ...              <------ SIGKILL ----- after a random delay
 *                                                check, read all, repair, read again,
 *                                                qemu-img check
 *
 * Images continue across a few rounds (after repair, so each round writes into the
 * image the last crash left) and are then recreated with the next allocation unit size
 * of the series: VDI 1 MiB and 64 KiB blocks; QCOW2 version 3 every cluster size from
 * 512 bytes to 2 MiB.  Each format has a second series with RT_VD_OPEN_NO_CACHE when
 * the file system takes O_DIRECT.  For QCOW2 a crash can strike between any two of
 * commit's steps (refcounts, L2 tables, L1 table, decrements).  After every round,
 * before anything touches the image, both checkers judge it: ours must find no
 * corruption, qemu-img check must exit 0 or 3 (QCOW2) or 0 (VDI, which it reads with
 * 1 MiB blocks only and for which it knows no leaks).
 *
 * Built with -DTST_ENOSPC (tst_vd_enospc) the rounds run on a small tmpfs the test
 * mounts (as root; exit 77 with the reason where it cannot): the image fills the file
 * system mid-run, writes fail with a full disk (the child carries on: a failed write
 * is not durable, nothing else changes), the parent frees space by deleting a ballast
 * file at a random moment, and the kill comes after.  Every write whose flush returned
 * RT_OK must still read back.
 *
 * Set TST_VD_CRASH_SEED to replay a round's random choices (the kill timing stays
 * random), TST_VD_CRASH_ROUNDS to run more rounds per unit size (a soak).
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <rt/mem.h>
#include <rt/time.h>
#include <rt/vd.h>

#include "tst_common.h"
#include "tst_qemu_img.h"

#define SECTOR        512u
#define DISK_SIZE     (128ull << 20)
#define DISK_SECTORS  (DISK_SIZE / SECTOR)
#define MAX_WRITE     (256u << 10)
#define MAX_IN_FLIGHT 48u
#define MAX_FLUSHES   2u
#define QUEUE_DEPTH   64u
/* A child left alone stops by itself after this long (the parent kills it far sooner). */
#define CHILD_MAX_MS    20000u
/* Rounds an image lives before it is recreated with the next unit size (more with
 * TST_VD_CRASH_ROUNDS). */
#define SERIES             2
#define KILL_MIN_MS        20u
#define KILL_MAX_MS        1200u
#define FIRST_FLUSH_MAX_MS 15000u
/* How long the killed child's image lock may outlive it (see open_after_the_kill). */
#define LOCK_RELEASE_MAX_MS 5000u

#define SECTOR_MAGIC 0x31485352435f5456ull /* "VT_CRSH1" */

/* Where the child writes: all of the disk, or (on the small file system) 20 MiB more
 * of it each round an image lives, so that each round both fills the file system and,
 * once the ballast is gone, makes progress.  Set by the parent before the fork. */
#ifdef TST_ENOSPC
#define SPAN_STEP (20ull << 20)
#else
#define SPAN_STEP DISK_SIZE
#endif
static uint64_t write_span = SPAN_STEP;

/* The head of every payload sector. */
struct sector_head {
    uint64_t magic;
    uint64_t sector_off; /* guest offset of this sector */
    uint64_t gen;        /* generation of the write that carried it */
    uint64_t write_off;  /* that write's range */
    uint64_t write_len;
};
_Static_assert(sizeof(struct sector_head) == 40, "no padding in the sector head");
_Static_assert((SECTOR - sizeof(struct sector_head)) % 8 == 0, "body is whole words");

/* A child's report record. */
enum { REPORT_WRITE = 1, REPORT_DURABLE = 2, REPORT_FAILED = 3 };
struct report {
    uint32_t kind;
    uint32_t len; /* REPORT_WRITE: bytes */
    uint64_t gen; /* REPORT_WRITE: generation */
    uint64_t off; /* REPORT_WRITE: guest offset; REPORT_DURABLE: writes durable;
                   * REPORT_FAILED: writes that failed so far (a full disk) */
};
_Static_assert(sizeof(struct report) == 24, "report records are packed");

/* ---------------------------------------------------------------------------------- */
/* Payloads. */

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void fill_sector(uint8_t *s, uint64_t sector_off, uint64_t gen, uint64_t write_off,
                        uint64_t write_len)
{
    struct sector_head h = {SECTOR_MAGIC, sector_off, gen, write_off, write_len};
    memcpy(s, &h, sizeof h);
    uint64_t x = (sector_off * 0x9e3779b97f4a7c15ull) ^ (gen * 0xd1b54a32d192ed03ull) ^ 1u;
    for (size_t i = sizeof h; i < SECTOR; i += 8) {
        uint64_t v = xorshift(&x);
        memcpy(s + i, &v, 8);
    }
}

static bool all_zero(const uint8_t *s)
{
    for (size_t i = 0; i < SECTOR; i++)
        if (s[i] != 0)
            return false;
    return true;
}

/* Is @a s zeros, or a sector that some write put at @a sector_off?  Stores that write's
 * generation (0 for zeros) in *gen; false for anything else. */
static bool parse_sector(const uint8_t *s, uint64_t sector_off, uint64_t *gen)
{
    if (all_zero(s)) {
        *gen = 0;
        return true;
    }
    struct sector_head h;
    memcpy(&h, s, sizeof h);
    if (h.magic != SECTOR_MAGIC || h.sector_off != sector_off || h.gen == 0 || h.write_len == 0 ||
        h.write_len > MAX_WRITE || sector_off < h.write_off ||
        sector_off >= h.write_off + h.write_len)
        return false;
    uint8_t want[SECTOR];
    fill_sector(want, sector_off, h.gen, h.write_off, h.write_len);
    if (memcmp(want, s, SECTOR) != 0)
        return false;
    *gen = h.gen;
    return true;
}

/* ---------------------------------------------------------------------------------- */
/* The child. */

struct child_write {
    bool busy;
    uint64_t off, gen;
    uint32_t len;
    uint8_t *buf;
};

struct child_flush {
    bool busy;
    size_t covers; /* completed writes when it started */
};

struct child {
    rt_vd_t vd;
    rt_vd_queue_t queue;
    int report_fd;
    uint64_t next_gen;
    uint64_t rng;
    struct child_write writes[MAX_IN_FLIGHT];
    unsigned in_flight;
    struct child_flush flushes[MAX_FLUSHES];
    unsigned flushes_in_flight;
    struct report *log; /* completed writes, in completion order */
    size_t log_len, log_cap;
    size_t durable; /* the first @a durable of log are covered by a completed flush */
    size_t sent;    /* log records sent */
    size_t sent_durable;
    uint64_t failed; /* writes that failed (TST_ENOSPC) */
};

static void child_fail(const char *what, int rc)
{
    fprintf(stderr, "crash child: %s: %s\n", what, rt_status_name(rc));
    _exit(3);
}

static struct child *the_child; /* the child's state (one per child process) */

/* On a file system that fills up, a write may fail (and then any later one, once a
 * failed commit has poisoned the image): it is simply not durable. */
#ifdef TST_ENOSPC
static const bool tolerate_full = true;
#else
static const bool tolerate_full = false;
#endif

static bool tolerated(int status)
{
    return tolerate_full && (status == RT_ERR_DISK_FULL || status == RT_ERR_IO);
}

static void on_write_done(void *user, int status)
{
    struct child_write *w = user;
    struct child *c = the_child;
    if (status != RT_OK && !tolerated(status))
        child_fail("write", status);
    if (status != RT_OK) {
        rt_mem_page_free(w->buf, w->len);
        w->busy = false;
        c->in_flight--;
        c->failed++;
        return;
    }
    if (c->log_len == c->log_cap) {
        c->log_cap = c->log_cap ? 2 * c->log_cap : 4096;
        c->log = realloc(c->log, c->log_cap * sizeof(*c->log));
        if (c->log == NULL)
            child_fail("log", RT_ERR_NO_MEMORY);
    }
    c->log[c->log_len++] = (struct report){REPORT_WRITE, w->len, w->gen, w->off};
    rt_mem_page_free(w->buf, w->len);
    w->busy = false;
    c->in_flight--;
}

static void on_flush_done(void *user, int status)
{
    struct child_flush *f = user;
    struct child *c = the_child;
    if (status != RT_OK && !tolerated(status))
        child_fail("flush", status);
    if (status == RT_OK && f->covers > c->durable)
        c->durable = f->covers;
    f->busy = false;
    c->flushes_in_flight--;
}

static uint64_t child_random(struct child *c, uint64_t bound)
{
    return xorshift(&c->rng) % bound;
}

/* Picks a range overlapping no write in flight; false when a few tries found none. */
static bool pick_range(struct child *c, uint64_t *off, uint32_t *len)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t r = child_random(c, 100);
        uint64_t sectors = r < 10   ? 1
                           : r < 50 ? 8
                           : r < 80 ? 1 + child_random(c, 128)
                                    : 1 + child_random(c, MAX_WRITE / SECTOR);
        uint64_t bytes = sectors * SECTOR;
        uint64_t align = child_random(c, 10) < 7 ? 4096 : SECTOR;
        uint64_t o = child_random(c, (write_span - bytes) / align + 1) * align;
        bool clash = false;
        for (unsigned i = 0; i < MAX_IN_FLIGHT && !clash; i++) {
            const struct child_write *w = &c->writes[i];
            clash = w->busy && o < w->off + w->len && w->off < o + bytes;
        }
        if (!clash) {
            *off = o;
            *len = (uint32_t)bytes;
            return true;
        }
    }
    return false;
}

static void child_issue_write(struct child *c)
{
    struct child_write *w = NULL;
    for (unsigned i = 0; i < MAX_IN_FLIGHT && w == NULL; i++)
        if (!c->writes[i].busy)
            w = &c->writes[i];
    uint64_t off;
    uint32_t len;
    if (w == NULL || !pick_range(c, &off, &len))
        return;
    w->buf = rt_mem_page_alloc(len);
    if (w->buf == NULL)
        child_fail("payload", RT_ERR_NO_MEMORY);
    w->off = off;
    w->len = len;
    w->gen = c->next_gen++;
    for (uint32_t s = 0; s < len; s += SECTOR)
        fill_sector(w->buf + s, off + s, w->gen, off, len);
    rt_iovec_t iov = {w->buf, len};
    int rc = rt_vd_queue_write(c->queue, c->vd, off, &iov, 1, on_write_done, w);
    if (rc != RT_OK && tolerated(rc)) {
        rt_mem_page_free(w->buf, len);
        return; /* a poisoned image refuses at once */
    }
    if (rc != RT_OK)
        child_fail("rt_vd_queue_write", rc);
    w->busy = true;
    c->in_flight++;
}

static void child_issue_flush(struct child *c)
{
    for (unsigned i = 0; i < MAX_FLUSHES; i++) {
        struct child_flush *f = &c->flushes[i];
        if (f->busy)
            continue;
        f->covers = c->log_len;
        int rc = rt_vd_queue_flush(c->queue, c->vd, on_flush_done, f);
        if (rc != RT_OK && tolerated(rc))
            return;
        if (rc != RT_OK)
            child_fail("rt_vd_queue_flush", rc);
        f->busy = true;
        c->flushes_in_flight++;
        return;
    }
}

static void send_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "crash child: report pipe: %s\n", strerror(errno));
            _exit(3);
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Sends the writes a completed flush covers, then the marker naming how many. */
static void child_report(struct child *c)
{
    if (c->durable == c->sent_durable)
        return;
    if (c->durable > c->sent)
        send_all(c->report_fd, c->log + c->sent, (c->durable - c->sent) * sizeof(*c->log));
    c->sent = c->durable;
    struct report marker = {REPORT_DURABLE, 0, 0, c->durable};
    send_all(c->report_fd, &marker, sizeof marker);
    if (tolerate_full) {
        struct report failed = {REPORT_FAILED, 0, 0, c->failed};
        send_all(c->report_fd, &failed, sizeof failed);
    }
    c->sent_durable = c->durable;
}

static void child_main(const char *path, const char *format, uint32_t open_flags,
                       uint64_t first_gen, uint64_t seed, int report_fd)
{
    static struct child c;
    the_child = &c;
    c.report_fd = report_fd;
    c.next_gen = first_gen;
    c.rng = seed | 1;
    rt_vd_error_t err;
    int rc = rt_vd_open(&c.vd, path, format, open_flags, &err);
    if (rc != RT_OK) {
        fprintf(stderr, "crash child: open %s: %s: %s\n", path, rt_status_name(rc), err.msg);
        _exit(3);
    }
    if ((rc = rt_vd_queue_create(&c.queue, QUEUE_DEPTH)) != RT_OK)
        child_fail("rt_vd_queue_create", rc);
    uint64_t start = rt_time_milli_ts();
    size_t flush_after = 8;
    while (rt_time_milli_ts() - start < CHILD_MAX_MS) {
        while (c.in_flight < MAX_IN_FLIGHT) {
            unsigned before = c.in_flight;
            child_issue_write(&c);
            if (c.in_flight == before)
                break;
        }
        if (c.flushes_in_flight < MAX_FLUSHES && c.log_len >= flush_after) {
            child_issue_flush(&c);
            flush_after = c.log_len + 4 + child_random(&c, 60);
        }
        rc = rt_vd_queue_run(c.queue, 1, 100, NULL);
        if (rc == RT_ERR_AIO_NO_REQUEST && tolerate_full) {
            usleep(1000); /* everything refused (a poisoned image): wait for the kill */
            rc = RT_OK;
        }
        if (rc != RT_OK && rc != RT_ERR_TIMEOUT)
            child_fail("rt_vd_queue_run", rc);
        child_report(&c);
    }
    _exit(0);
}

/* ---------------------------------------------------------------------------------- */
/* The parent. */

static uint64_t parent_rng;

static uint64_t parent_random(uint64_t bound)
{
    return xorshift(&parent_rng) % bound;
}

/* Per sector: the generation that must be there at least (0: none). */
static uint64_t *floor_gen;
/* Per sector: what the last verification found. */
static uint64_t *seen_gen;

struct round_stats {
    size_t durable, bad;
    uint64_t leaks;
    uint64_t failed; /* writes the child saw fail (a full disk) */
};

/* Reads every sector and judges it against floor_gen: exactly floor_gen[s], or a
 * generation >= @a newer_from and above floor_gen[s] (newer_from UINT64_MAX: exact).
 * Fills seen_gen.  Returns the number of bad sectors. */
static size_t verify(rt_vd_t vd, uint64_t newer_from, const char *when, bool quiet)
{
    enum { CHUNK = 4 << 20 };
    uint8_t *buf = rt_mem_page_alloc(CHUNK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    size_t bad = 0;
    for (uint64_t off = 0; off < DISK_SIZE; off += CHUNK) {
        int rc = rt_vd_read(vd, off, buf, CHUNK);
        TST_RC(rc, RT_OK);
        if (rc != RT_OK) {
            bad++;
            break;
        }
        for (uint64_t s = 0; s < CHUNK; s += SECTOR) {
            uint64_t sector = (off + s) / SECTOR;
            uint64_t gen = 0, want = floor_gen[sector];
            bool ok = parse_sector(buf + s, off + s, &gen);
            const char *why = "garbage (torn, misplaced or foreign bytes)";
            if (ok && gen != want && !(gen > want && gen >= newer_from)) {
                ok = false;
                why = gen == 0     ? "zeros: a durable write was lost"
                      : gen < want ? "older data: a durable write was lost"
                                   : "data that should not be there";
            }
            seen_gen[sector] = gen;
            if (!ok && bad++ < 10 && !quiet)
                fprintf(stderr, "\n  %s: sector at %llu: %s (found gen %llu, durable gen %llu)",
                        when, (unsigned long long)(off + s), why, (unsigned long long)gen,
                        (unsigned long long)want);
        }
    }
    rt_mem_page_free(buf, CHUNK);
    return bad;
}

/* The verifier must be able to fail: a durable sector overwritten with zeros, and
 * with the bytes of its neighbour, must each be one bad sector.  Run once, on the
 * first image that has a durable sector; restores what it changed. */
static bool oracle_tested;

static void test_the_oracle(rt_vd_t vd)
{
    uint64_t s = 1;
    while (s < DISK_SECTORS && floor_gen[s] == 0)
        s++;
    if (s == DISK_SECTORS)
        return;
    uint8_t keep[SECTOR], other[SECTOR];
    uint64_t off = s * SECTOR;
    TST_RC(rt_vd_read(vd, off, keep, SECTOR), RT_OK);
    TST_RC(rt_vd_read(vd, off - SECTOR, other, SECTOR), RT_OK);
    TST_RC(rt_vd_write(vd, off, (uint8_t[SECTOR]){0}, SECTOR), RT_OK);
    CU_ASSERT_EQUAL(verify(vd, UINT64_MAX, "oracle", true), 1);
    TST_RC(rt_vd_write(vd, off, other, SECTOR), RT_OK);
    CU_ASSERT_EQUAL(verify(vd, UINT64_MAX, "oracle", true), 1);
    TST_RC(rt_vd_write(vd, off, keep, SECTOR), RT_OK);
    CU_ASSERT_EQUAL(verify(vd, UINT64_MAX, "oracle", false), 0);
    oracle_tested = true;
}

/* Has the child reported a completed flush yet? */
static bool has_marker(const uint8_t *reports, size_t len)
{
    for (size_t i = 0; i + sizeof(struct report) <= len; i += sizeof(struct report)) {
        struct report r;
        memcpy(&r, reports + i, sizeof r);
        if (r.kind == REPORT_DURABLE)
            return true;
    }
    return false;
}

/* Reads the child's reports until @a deadline (ms timestamp) or EOF when 0. */
static void drain(int fd, uint8_t **buf, size_t *len, size_t *cap, uint64_t deadline)
{
    for (;;) {
        int timeout = -1;
        if (deadline != 0) {
            uint64_t now = rt_time_milli_ts();
            if (now >= deadline)
                return;
            timeout = (int)(deadline - now);
        }
        struct pollfd p = {fd, POLLIN, 0};
        int n = poll(&p, 1, timeout);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            return;
        if (*cap - *len < 65536) {
            *cap = *cap ? 2 * *cap : 1 << 20;
            *buf = realloc(*buf, *cap);
            if (*buf == NULL) {
                fprintf(stderr, "no memory for the child's reports\n");
                exit(1);
            }
        }
        ssize_t got = read(fd, *buf + *len, *cap - *len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return; /* EOF: the child is gone */
        *len += (size_t)got;
    }
}

static uint32_t vd_block_size(rt_vd_t vd)
{
    rt_vd_info_t info;
    return rt_vd_get_info(vd, &info) == RT_OK && info.block_size >= SECTOR ? info.block_size
                                                                           : SECTOR;
}

/* Keeps the evidence of a lost write: the image and the child's reports, copied out of
 * the scratch directory, and a description of the first writes that lost sectors. */
static void explain_loss(rt_vd_t vd, const char *path, const char *format, int round,
                         const struct report *r, size_t records, size_t durable)
{
    const char *base = getenv("TMPDIR");
    char keep[600], cmd[1400];
    snprintf(keep, sizeof keep, "%s/vrt-crash-%d-round%d", base && *base ? base : "/var/tmp",
             (int)getpid(), round);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s.%s'", path, keep, format);
    if (system(cmd) == 0)
        fprintf(stderr, "\n  round %d: image kept as %s.%s", round, keep, format);
    snprintf(cmd, sizeof cmd, "%s.reports", keep);
    FILE *f = fopen(cmd, "w");
    if (f != NULL) {
        fprintf(f, "# index gen offset length (the first %zu are durable)\n", durable);
        for (size_t i = 0, n = 0; i < records; i++)
            if (r[i].kind == REPORT_WRITE)
                fprintf(f, "%zu %llu %llu %u\n", n++, (unsigned long long)r[i].gen,
                        (unsigned long long)r[i].off, r[i].len);
        fclose(f);
        fprintf(stderr, "\n  round %d: child's reports kept as %s", round, cmd);
    }
    int shown = 0;
    for (size_t i = 0, n = 0; i < records && n < durable && shown < 4; i++) {
        if (r[i].kind != REPORT_WRITE)
            continue;
        n++;
        uint64_t first = r[i].off / SECTOR, end = (r[i].off + r[i].len) / SECTOR;
        size_t lost = 0, zero = 0;
        for (uint64_t s = first; s < end; s++)
            if (floor_gen[s] == r[i].gen && seen_gen[s] < r[i].gen) {
                lost++;
                zero += seen_gen[s] == 0;
            }
        if (lost == 0)
            continue;
        shown++;
        fprintf(stderr,
                "\n  write #%zu (gen %llu, %llu+%u, durable #%zu of %zu): %zu sectors "
                "lost (%zu zero)",
                n - 1, (unsigned long long)r[i].gen, (unsigned long long)r[i].off, r[i].len, n,
                durable, lost, zero);
        for (uint64_t s = first; s < end; s += (vd_block_size(vd) / SECTOR)) {
            rt_vd_extent_t ext;
            if (rt_vd_block_status(vd, s * SECTOR, SECTOR, &ext) == RT_OK)
                fprintf(stderr, "\n    sector %llu: flags 0x%x host 0x%llx",
                        (unsigned long long)(s * SECTOR), ext.flags,
                        (unsigned long long)ext.host_offset);
        }
    }
}


/* A series of rounds: one format, one way of opening, its unit sizes in turn. */
#define MAX_UNITS 13
struct series {
    const char *file;
    const char *format;
    uint32_t version; /* rt_vd_create_opts_t.version */
    uint32_t open_flags;
    uint32_t units[MAX_UNITS]; /* 0-terminated when shorter */
};

/* Where the images live: the scratch directory, or the small tmpfs (TST_ENOSPC). */
static char image_dir[512];
/* Rounds per image (SERIES, or TST_VD_CRASH_ROUNDS). */
static int rounds_per_unit = SERIES;

#ifdef TST_ENOSPC
#include <sys/mount.h>
#include <sys/statvfs.h>
/* The file system fills up: a ballast file takes all but a little of what is free at
 * the start of a round, and is deleted mid-round. */
#define FS_SIZE      "48m"
#define BALLAST_LEFT (1u << 20)
static bool mounted;

static void unmount_fs(void)
{
    if (mounted && umount2(image_dir, MNT_DETACH) != 0)
        fprintf(stderr, "warning: cannot unmount %s: %s\n", image_dir, strerror(errno));
}

/* Mounts the small tmpfs; false (with the reason printed) when it cannot be made. */
static bool mount_small_fs(void)
{
    tst_path(image_dir, sizeof image_dir, "small-fs");
    if (mkdir(image_dir, 0700) != 0) {
        printf("SKIP: cannot create %s: %s\n", image_dir, strerror(errno));
        return false;
    }
    if (mount("tmpfs", image_dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=" FS_SIZE) != 0) {
        printf("SKIP: cannot mount a %s tmpfs to fill up (%s; the ENOSPC rounds need root "
               "or CAP_SYS_ADMIN)\n",
               FS_SIZE, strerror(errno));
        return false;
    }
    mounted = true;
    atexit(unmount_fs);
    return true;
}

/* Fills all but BALLAST_LEFT of the free space with the ballast file. */
static void make_ballast(const char *ballast)
{
    static uint8_t chunk[64u << 10];
    struct statvfs fs;
    if (statvfs(image_dir, &fs) != 0)
        return;
    uint64_t free_bytes = (uint64_t)fs.f_bavail * fs.f_frsize;
    uint64_t want = free_bytes > BALLAST_LEFT ? free_bytes - BALLAST_LEFT : 0;
    memset(chunk, 0xba, sizeof chunk);
    int fd = open(ballast, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    for (uint64_t done = 0; fd >= 0 && done < want; done += sizeof chunk)
        if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk)
            break;
    if (fd >= 0)
        close(fd);
}
#endif

/* Opens the image the killed child held.  The child's image lock goes when the last
 * reference to its open file goes, and io_uring drops the references of requests that were
 * in flight from a kernel worker after the process has been reaped: for a moment the lock
 * can outlive the child.  So a refusal is retried for a bounded time (and reported), not
 * taken for a lock that outlives its holder. */
static int open_after_the_kill(rt_vd_t *vd, const char *path, const char *format,
                               rt_vd_error_t *err)
{
    uint64_t start = rt_time_milli_ts();
    int rc;
    while ((rc = rt_vd_open(vd, path, format, 0, err)) == RT_ERR_VD_LOCKED &&
           rt_time_milli_ts() - start < LOCK_RELEASE_MAX_MS)
        usleep(2000);
    uint64_t waited = rt_time_milli_ts() - start;
    if (rc == RT_OK && waited >= 2)
        printf("\n    (the lock outlived the child by %llu ms)", (unsigned long long)waited);
    return rc;
}

/* One round: child, kill, check, verify, repair, verify again. */
static void crash_round(const struct series *sr, const char *path, int round, bool fresh,
                        uint32_t block_size, struct round_stats *st)
{
    rt_vd_error_t err;
    memset(st, 0, sizeof *st);
    if (fresh) {
        unlink(path);
        rt_vd_create_opts_t opts = {
            .size = DISK_SIZE, .block_size = block_size, .version = sr->version};
        TST_RC_FATAL(rt_vd_create(path, sr->format, &opts, &err), RT_OK);
        memset(floor_gen, 0, DISK_SECTORS * sizeof(*floor_gen));
    }
    uint64_t first_gen = ((uint64_t)round + 1) << 32;
    uint64_t child_seed = xorshift(&parent_rng);
#ifdef TST_ENOSPC
    char ballast[600];
    snprintf(ballast, sizeof ballast, "%s/ballast", image_dir);
    make_ballast(ballast);
#endif

    int fds[2];
    CU_ASSERT_FATAL(pipe(fds) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        child_main(path, sr->format, sr->open_flags, first_gen, child_seed, fds[1]);
        _exit(3);
    }
    close(fds[1]);
    uint8_t *reports = NULL;
    size_t len = 0, cap = 0;
#ifdef TST_ENOSPC
    /* Let the disk fill, then give the child room again before the kill. */
    drain(fds[0], &reports, &len, &cap, rt_time_milli_ts() + 50 + parent_random(600));
    unlink(ballast);
#endif
    /* Every other round the kill waits for a first completed flush (a loaded machine can
     * take seconds to fsync), so that durable data is at stake in every series; the
     * other rounds kill at any moment, early ones included. */
    if (round % 2 == 1) {
        uint64_t give_up = rt_time_milli_ts() + FIRST_FLUSH_MAX_MS;
        while (!has_marker(reports, len) && rt_time_milli_ts() < give_up)
            drain(fds[0], &reports, &len, &cap, rt_time_milli_ts() + 20);
    }
    uint64_t delay = KILL_MIN_MS + parent_random(KILL_MAX_MS - KILL_MIN_MS);
    drain(fds[0], &reports, &len, &cap, rt_time_milli_ts() + delay);
    kill(pid, SIGKILL);
    drain(fds[0], &reports, &len, &cap, 0);
    close(fds[0]);
    int status = 0;
    CU_ASSERT_FATAL(waitpid(pid, &status, 0) == pid);
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
        fprintf(stderr, "\n  round %d: the child ended by itself (status 0x%x)", round, status);
        CU_FAIL("the child must run until killed");
    }

    /* The reports: complete records only; D(s) from the writes the last marker covers. */
    size_t records = len / sizeof(struct report);
    size_t durable = 0, writes = 0;
    const struct report *r = (const struct report *)reports;
    for (size_t i = 0; i < records; i++) {
        if (r[i].kind == REPORT_WRITE) {
            writes++;
        } else if (r[i].kind == REPORT_FAILED) {
            st->failed = r[i].off;
        } else if (r[i].kind == REPORT_DURABLE) {
            CU_ASSERT(r[i].off == writes);
            durable = r[i].off;
        } else {
            CU_FAIL("unknown report record");
        }
    }
    st->durable = durable;
    for (size_t i = 0, seen = 0; i < records && seen < durable; i++) {
        if (r[i].kind != REPORT_WRITE)
            continue;
        seen++;
        CU_ASSERT(r[i].gen >= first_gen);
        for (uint64_t s = r[i].off / SECTOR; s < (r[i].off + r[i].len) / SECTOR; s++)
            if (r[i].gen > floor_gen[s])
                floor_gen[s] = r[i].gen;
    }

    /* qemu-img's verdict on the crashed image, before anything touches it (its own
     * check, independent of ours): QCOW2 clean or leaks; VDI clean, since it calls
     * any leak an "allocated blocks mismatch".  It reads VDI with 1 MiB blocks only. */
    bool is_qcow2 = strcmp(sr->format, "qcow2") == 0;
    bool qemu_reads = is_qcow2 || block_size == (1u << 20);
    int before = qemu_reads ? qemu_img_check_status(path, sr->format) : -1;
    bool before_ok = before <= 0 || (is_qcow2 && before == 3);
    if (!before_ok) {
        fprintf(stderr, "\n  round %d: qemu-img check after the crash: status %d", round, before);
        qemu_img_clean_as(path, sr->format); /* shows what it says */
    }
    CU_ASSERT(before_ok);

    /* Check, read all, repair, read all again (exactly what the first read found). */
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_check_result_t res;
    int rc = open_after_the_kill(&vd, path, sr->format, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  round %d: the image does not open: %s: %s", round, rt_status_name(rc),
                err.msg);
    TST_RC_FATAL(rc, RT_OK);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    if (res.corruptions != 0)
        fprintf(stderr, "\n  round %d: check: %s", round, res.first_problem);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    st->leaks = res.leaks;
    st->bad = verify(vd, first_gen, "after the crash", false);
    CU_ASSERT_EQUAL(st->bad, 0);
    if (st->bad > 0)
        explain_loss(vd, path, sr->format, round, r, records, durable);
    free(reports);
    memcpy(floor_gen, seen_gen, DISK_SECTORS * sizeof(*floor_gen));
    if (!oracle_tested)
        test_the_oracle(vd);

    TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks_fixed, st->leaks);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    CU_ASSERT_EQUAL(verify(vd, UINT64_MAX, "after the repair", false), 0);
    TST_RC(rt_vd_close(vd), RT_OK);

    int clean = qemu_reads ? qemu_img_clean_as(path, sr->format) : -1;
    if (clean == 0)
        fprintf(stderr, "\n  round %d: qemu-img check is not clean", round);
    CU_ASSERT(clean != 0);
}

static size_t unit_count(const struct series *sr)
{
    size_t n = 0;
    while (n < MAX_UNITS && sr->units[n] != 0)
        n++;
    return n;
}

static const char *unit_text(uint32_t unit, char *buf, size_t room)
{
    if (unit >= (1u << 20))
        snprintf(buf, room, "%u MiB", unit >> 20);
    else if (unit >= 1024)
        snprintf(buf, room, "%u KiB", unit >> 10);
    else
        snprintf(buf, room, "%u B", unit);
    return buf;
}

/* Does this file system take O_DIRECT for this format and unit?  Says why not. */
static bool direct_io_works(const char *format, uint32_t unit)
{
    char path[600];
    rt_vd_error_t err;
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_create_opts_t opts = {.size = DISK_SIZE, .block_size = unit};
    snprintf(path, sizeof path, "%s/crash-probe-direct", image_dir);
    unlink(path);
    TST_RC_FATAL(rt_vd_create(path, format, &opts, &err), RT_OK);
    int rc = rt_vd_open(&vd, path, format, RT_VD_OPEN_NO_CACHE, &err);
    unlink(path);
    if (rc != RT_OK) {
        printf("\n  note: %s with %u-byte units uncached on %s: %s (%s): skipped ", format, unit,
               image_dir, rt_status_name(rc), err.msg);
        return false;
    }
    rt_vd_close(vd);
    return true;
}

static void run_series(const struct series *sr)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", image_dir, sr->file);
    size_t durable_total = 0;
    uint64_t failed_total = 0;
    size_t units = unit_count(sr);
    int round = 0;
    for (size_t u = 0; u < units; u++) {
        uint32_t unit = sr->units[u];
        if ((sr->open_flags & RT_VD_OPEN_NO_CACHE) && !direct_io_works(sr->format, unit))
            continue;
        for (int k = 0; k < rounds_per_unit; k++, round++) {
            struct round_stats st;
            char text[32];
            uint64_t t0 = rt_time_milli_ts();
            write_span = SPAN_STEP * (uint64_t)(k + 1) < DISK_SIZE ? SPAN_STEP * (uint64_t)(k + 1)
                                                                   : DISK_SIZE;
            crash_round(sr, path, round, k == 0, unit, &st);
            printf("\n    round %d (%s, %s %s): %zu writes reported durable, %llu leaks, %zu "
                   "bad sectors, %llu ms",
                   round, k == 0 ? "new image" : "same image", unit_text(unit, text, sizeof text),
                   strcmp(sr->format, "qcow2") == 0 ? "clusters" : "blocks", st.durable,
                   (unsigned long long)st.leaks, st.bad,
                   (unsigned long long)(rt_time_milli_ts() - t0));
            durable_total += st.durable;
            failed_total += st.failed;
            if (tolerate_full)
                printf(", %llu writes failed (disk full)", (unsigned long long)st.failed);
        }
    }
    printf("\n  ");
    /* On the small file system the disk must have filled at least once. */
    CU_ASSERT(!tolerate_full || round == 0 || failed_total > 0);
    /* Kills are random, but over the rounds some flushes must have completed, or the
     * test proved nothing. */
    CU_ASSERT(round == 0 || durable_total > 0);
    unlink(path);
}

#define KIB(n) ((n) * 1024u)
#define MIB(n) ((n) * 1024u * 1024u)

#ifndef TST_ENOSPC
static const struct series vdi_cached = {
    .file = "crash-cached.vdi", .format = "vdi", .units = {MIB(1), KIB(64)}};
static const struct series vdi_direct = {.file = "crash-direct.vdi",
                                         .format = "vdi",
                                         .open_flags = RT_VD_OPEN_NO_CACHE,
                                         .units = {MIB(1), KIB(64)}};
/* Every cluster size QCOW2 has. */
static const struct series qcow2_cached = {
    .file = "crash-cached.qcow2",
    .format = "qcow2",
    .version = 3,
    .units = {512, KIB(1), KIB(2), KIB(4), KIB(8), KIB(16), KIB(32), KIB(64), KIB(128), KIB(256),
              KIB(512), MIB(1), MIB(2)}};
static const struct series qcow2_direct = {.file = "crash-direct.qcow2",
                                           .format = "qcow2",
                                           .version = 3,
                                           .open_flags = RT_VD_OPEN_NO_CACHE,
                                           .units = {512, KIB(4), KIB(64), MIB(2)}};

static void test_crash_cached(void)
{
    run_series(&vdi_cached);
}

static void test_crash_no_cache(void)
{
    run_series(&vdi_direct);
}

static void test_crash_qcow2_cached(void)
{
    run_series(&qcow2_cached);
}

static void test_crash_qcow2_no_cache(void)
{
    run_series(&qcow2_direct);
}
#else
static const struct series vdi_full = {
    .file = "full.vdi", .format = "vdi", .units = {MIB(1)}};
static const struct series qcow2_full = {
    .file = "full.qcow2", .format = "qcow2", .version = 3, .units = {KIB(64), KIB(4), 512}};

static void test_enospc_vdi(void)
{
    run_series(&vdi_full);
}

static void test_enospc_qcow2(void)
{
    run_series(&qcow2_full);
}
#endif

int main(void)
{
    const char *seed_env = getenv("TST_VD_CRASH_SEED");
    uint64_t seed = seed_env != NULL ? strtoull(seed_env, NULL, 0) : rt_time_nano_ts();
    printf("TST_VD_CRASH_SEED=%llu\n", (unsigned long long)seed);
    parent_rng = seed | 1;
    floor_gen = calloc(DISK_SECTORS, sizeof(*floor_gen));
    seen_gen = calloc(DISK_SECTORS, sizeof(*seen_gen));
    if (floor_gen == NULL || seen_gen == NULL) {
        fprintf(stderr, "no memory for the sector model\n");
        return 1;
    }
    const char *rounds_env = getenv("TST_VD_CRASH_ROUNDS");
    if (rounds_env != NULL && atoi(rounds_env) > 0)
        rounds_per_unit = atoi(rounds_env);
    if (access(QEMU_IMG, X_OK) != 0)
        printf("note: %s not installed: images are not cross-checked with qemu-img\n", QEMU_IMG);
    else
        printf("note: qemu-img checks the QCOW2 rounds and the VDI rounds with 1 MiB blocks "
               "(it reads no other VDI block size)\n");

#ifndef TST_ENOSPC
    snprintf(image_dir, sizeof image_dir, "%s", tst_dir());
    CU_pSuite suite = tst_suite("VDI crash consistency (SIGKILL)");
    TST_ADD(suite, test_crash_cached);
    TST_ADD(suite, test_crash_no_cache);
    CU_pSuite qcow2 = tst_suite("QCOW2 crash consistency (SIGKILL)");
    TST_ADD(qcow2, test_crash_qcow2_cached);
    TST_ADD(qcow2, test_crash_qcow2_no_cache);
#else
    if (!mount_small_fs())
        return TST_SKIP;
    CU_pSuite suite = tst_suite("crash consistency on a file system that fills up");
    TST_ADD(suite, test_enospc_vdi);
    TST_ADD(suite, test_enospc_qcow2);
#endif
    int rc = tst_run();
    free(floor_gen);
    free(seen_gen);
    return rc;
}
