/*
 * Data integrity and concurrency stress for file AIO, run against every backend this
 * host has (a backend whose context cannot be created is skipped with the reason).
 *
 * (a) Integrity.  Four writer threads share one context and one file and submit
 *     batches of self-describing 4 KiB blocks: each block carries its index, a
 *     generation, its writer and a checksum over the whole block.  One reaper thread
 *     waits and hands requests back to their writers.  A second generation overwrites
 *     every block once the first has completed.  Then every block is read back through
 *     AIO (plain reads and two-piece readv) and must say "I am block i, generation 2,
 *     intact".  A write that landed at the wrong offset, twice, torn, late or not at all
 *     shows up in what the block says about itself (rule 16); the reaper proves each
 *     request came back exactly once with its full length (rules 5, 6, 10, 11).
 *
 * (b) Stress.  Many submitters, one waiter, plus threads that cancel random in-flight
 *     requests, call wakeup, and try to wait at the same time as the waiter.  Every
 *     submission carries a sequence number in its user value, and every end of a
 *     submission (returned by wait, or cancelled with RT_OK) flips the request from
 *     in-flight to free with a compare-and-swap, so a request that ends twice (returned
 *     twice, or returned AND cancelled) or a stale return is caught at once; at the end
 *     the counts must balance and the context must be empty and destroyable
 *     (rules 9, 10, 12, 13, 17).
 *
 * Normal runs take a few seconds.  TST_SOAK_SECONDS=N runs each backend's stress part
 * for N seconds (`make soak`).  Files use O_DIRECT (RT_FILE_NO_CACHE) where the file
 * system allows it, because only then does linux-aio run truly asynchronously and the
 * races above become real; otherwise they fall back to cached I/O, with a note.
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <rt/file.h>
#include <rt/mem.h>
#include <rt/time.h>

#include "tst_common.h"
#include "tst_data.h"

/* How the tests open their data files (O_DIRECT added where allowed). */
#define DATA_FILE_FLAGS (RT_FILE_READWRITE | RT_FILE_ASYNC_IO)

#define BLOCK 4096u
/* Upper bound for anything that should finish promptly; only a hang reaches it. */
#define LONG_MS 30000u

static const char *const backend_names[] = {"linux-aio", "threads", "io_uring"};
enum { N_BACKENDS = sizeof backend_names / sizeof backend_names[0] };

/* How long each backend's stress part runs. */
static unsigned stress_ms = 1000;

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                              */

static void sleep_us(unsigned us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Failures seen by worker threads, kept for the main thread to report: CUnit
 * assertions are not thread-safe. */
struct failures {
    pthread_mutex_t lock;
    unsigned count;
    char first[8][200];
};

static void failures_init(struct failures *f)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->lock, NULL);
}

__attribute__((format(printf, 2, 3))) static void fail_note(struct failures *f, const char *fmt,
                                                            ...)
{
    va_list ap;
    pthread_mutex_lock(&f->lock);
    if (f->count < 8) {
        va_start(ap, fmt);
        vsnprintf(f->first[f->count], sizeof f->first[0], fmt, ap);
        va_end(ap);
    }
    f->count++;
    pthread_mutex_unlock(&f->lock);
}

static void failures_report(struct failures *f)
{
    for (unsigned i = 0; i < f->count && i < 8; i++)
        fprintf(stderr, "  %s\n", f->first[i]);
    if (f->count > 8)
        fprintf(stderr, "  ... and %u more\n", f->count - 8);
    CU_ASSERT_EQUAL(f->count, 0);
    pthread_mutex_destroy(&f->lock);
}

/* Waits on a condition for at most @a ms (the caller holds @a lock). */
static void cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *lock, unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cond, lock, &ts);
}

/* A context on @a backend, or NIL (with the reason printed) when the host lacks it. */
static int backend_ctx(rt_aio_ctx_t *ctx, const char *backend, uint32_t max_reqs, uint32_t flags)
{
    *ctx = RT_AIO_CTX_NIL;
    return rt_aio_ctx_create(ctx, max_reqs, tst_backend_flag(backend) | flags);
}

/* ------------------------------------------------------------------------------------ */
/* (a) Integrity                                                                        */

enum { WRITERS = 4, WRITER_SLOTS = 16, BLOCKS = 1024, GENERATIONS = 2 };
#define BLOCK_MAGIC 0x4b434f4c42545256ull /* "VRTBLOCK" little-endian */

/* The head of every block; the last 8 bytes are an FNV-1a checksum of the rest. */
struct block_head {
    uint64_t magic;
    uint64_t index;
    uint64_t gen;
    uint64_t writer;
};

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t payload_seed(uint64_t index, uint64_t gen)
{
    return (index + 1) * 0x9E3779B97F4A7C15ull ^ (gen + 1) * 0xC2B2AE3D27D4EB4Full;
}

static void stamp_block(uint8_t *b, uint64_t index, uint64_t gen, unsigned writer)
{
    struct block_head h = {BLOCK_MAGIC, index, gen, writer};
    uint64_t seed = payload_seed(index, gen), sum;

    memcpy(b, &h, sizeof h);
    for (size_t at = sizeof h; at < BLOCK - 8; at += 8) {
        uint64_t v = rng_next(&seed);
        memcpy(b + at, &v, 8);
    }
    sum = fnv1a(b, BLOCK - 8);
    memcpy(b + BLOCK - 8, &sum, 8);
}

/* NULL when @a b is an intact copy of block @a index, generation @a gen; else what is
 * wrong with it. */
static const char *check_block(const uint8_t *b, uint64_t index, uint64_t gen)
{
    struct block_head h;
    uint64_t sum, seed = payload_seed(index, gen);

    memcpy(&sum, b + BLOCK - 8, 8);
    memcpy(&h, b, sizeof h);
    if (h.magic != BLOCK_MAGIC)
        return "no block header (never written, or foreign data)";
    if (sum != fnv1a(b, BLOCK - 8))
        return "checksum mismatch (torn or mixed block)";
    if (h.index != index)
        return "block belongs at another offset";
    if (h.gen != gen)
        return "stale generation (a later write is missing)";
    for (size_t at = sizeof h; at < BLOCK - 8; at += 8) {
        uint64_t v = rng_next(&seed), got;
        memcpy(&got, b + at, 8);
        if (got != v)
            return "payload differs from what was written";
    }
    return NULL;
}

struct writer;

struct wslot {
    rt_aio_req_t req;
    uint8_t *buf;
    struct writer *owner;
    uint64_t index, gen;
    atomic_bool in_flight;
};

struct irun;

struct writer {
    pthread_t thread;
    struct irun *run;
    unsigned id;
    struct wslot slots[WRITER_SLOTS];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct wslot *free[WRITER_SLOTS];
    size_t n_free;
};

struct irun {
    rt_aio_ctx_t ctx;
    rt_file_t file;
    struct writer writers[WRITERS];
    struct failures fails;
    atomic_bool abort;
    size_t expected, reaped;
};

static void writer_give_back(struct wslot *slot)
{
    struct writer *w = slot->owner;
    pthread_mutex_lock(&w->lock);
    w->free[w->n_free++] = slot;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct irun *run = w->run;
    uint64_t rng = 0x1234567ull + w->id * 0x9E3779B97F4A7C15ull;
    uint64_t mine[BLOCKS / WRITERS];
    const size_t count = BLOCKS / WRITERS;

    for (uint64_t gen = 1; gen <= GENERATIONS && !atomic_load(&run->abort); gen++) {
        size_t pos = 0;

        /* This writer's blocks, in a fresh random order each generation. */
        for (size_t i = 0; i < count; i++)
            mine[i] = i * WRITERS + w->id;
        for (size_t i = count - 1; i > 0; i--) {
            size_t j = (size_t)(rng_next(&rng) % (i + 1));
            uint64_t t = mine[i];
            mine[i] = mine[j];
            mine[j] = t;
        }

        while (pos < count && !atomic_load(&run->abort)) {
            struct wslot *batch[8];
            rt_aio_req_t reqs[8];
            size_t want = 1 + (size_t)(rng_next(&rng) % 8), k = 0;
            int rc;

            if (want > count - pos)
                want = count - pos;
            pthread_mutex_lock(&w->lock);
            while (w->n_free == 0 && !atomic_load(&run->abort))
                cond_wait_ms(&w->cond, &w->lock, 100);
            while (k < want && w->n_free > 0)
                batch[k++] = w->free[--w->n_free];
            pthread_mutex_unlock(&w->lock);

            for (size_t i = 0; i < k; i++) {
                struct wslot *s = batch[i];
                s->index = mine[pos + i];
                s->gen = gen;
                stamp_block(s->buf, s->index, gen, w->id);
                rc =
                    rt_aio_req_prepare_write(s->req, run->file, s->index * BLOCK, s->buf, BLOCK, s);
                if (rc != RT_OK) {
                    fail_note(&run->fails, "writer %u: prepare_write -> %s", w->id,
                              rt_status_name(rc));
                    atomic_store(&run->abort, true);
                    return NULL;
                }
                atomic_store(&s->in_flight, true);
                reqs[i] = s->req;
            }
            if (k == 0)
                continue;
            rc = rt_aio_ctx_submit(run->ctx, reqs, k);
            if (rc != RT_OK) {
                fail_note(&run->fails, "writer %u: submit of %zu -> %s", w->id, k,
                          rt_status_name(rc));
                atomic_store(&run->abort, true);
                return NULL;
            }
            pos += k;
        }

        /* Generation barrier: the next overwrite of a block starts only after this
         * one completed, so "the later write wins" is what rule 16 promises. */
        pthread_mutex_lock(&w->lock);
        while (w->n_free < WRITER_SLOTS && !atomic_load(&run->abort))
            cond_wait_ms(&w->cond, &w->lock, 100);
        pthread_mutex_unlock(&w->lock);
    }
    return NULL;
}

static bool is_writer_slot(struct irun *run, const void *p)
{
    for (unsigned t = 0; t < WRITERS; t++)
        for (unsigned i = 0; i < WRITER_SLOTS; i++)
            if (p == &run->writers[t].slots[i])
                return true;
    return false;
}

static void *reaper_main(void *arg)
{
    struct irun *run = arg;
    uint64_t deadline = rt_time_milli_ts() + LONG_MS;
    rt_aio_req_t out[64];

    while (run->reaped < run->expected && !atomic_load(&run->abort)) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(run->ctx, 1, 200, out, 64, &got);

        if (got > 64) {
            fail_note(&run->fails, "reaper: wait set *got to %u with room for 64", got);
            atomic_store(&run->abort, true);
            break;
        }
        for (uint32_t i = 0; i < got; i++) {
            struct wslot *s = rt_aio_req_get_user(out[i]);
            size_t n = 0;
            int status;

            if (!is_writer_slot(run, s) || s->req != out[i]) {
                fail_note(&run->fails, "reaper: wait returned an unknown request");
                atomic_store(&run->abort, true);
                continue;
            }
            if (!atomic_exchange(&s->in_flight, false))
                fail_note(&run->fails, "block %llu gen %llu returned by wait twice",
                          (unsigned long long)s->index, (unsigned long long)s->gen);
            status = rt_aio_req_get_rc(out[i], &n);
            if (status != RT_OK || n != BLOCK)
                fail_note(&run->fails, "write of block %llu gen %llu: %s, %zu bytes",
                          (unsigned long long)s->index, (unsigned long long)s->gen,
                          rt_status_name(status), n);
            writer_give_back(s);
        }
        run->reaped += got;
        if (rc != RT_OK && rc != RT_ERR_TIMEOUT) {
            fail_note(&run->fails, "reaper: wait -> %s", rt_status_name(rc));
            atomic_store(&run->abort, true);
            break;
        }
        if (rt_time_milli_ts() > deadline) {
            fail_note(&run->fails, "reaper: only %zu of %zu writes came back in %u ms", run->reaped,
                      run->expected, LONG_MS);
            atomic_store(&run->abort, true);
            break;
        }
    }
    /* Writers blocked on a free slot must see an abort. */
    for (unsigned t = 0; t < WRITERS; t++) {
        pthread_mutex_lock(&run->writers[t].lock);
        pthread_cond_broadcast(&run->writers[t].cond);
        pthread_mutex_unlock(&run->writers[t].lock);
    }
    return NULL;
}

/* Submits @a n prepared requests on @a ctx and waits for all of them (single thread). */
static bool run_batch(rt_aio_ctx_t ctx, rt_aio_req_t *reqs, size_t n)
{
    rt_aio_req_t out[64];
    size_t have = 0;
    uint64_t deadline = rt_time_milli_ts() + LONG_MS;

    TST_RC(rt_aio_ctx_submit(ctx, reqs, n), RT_OK);
    while (have < n && rt_time_milli_ts() < deadline) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(ctx, n - have, LONG_MS, out, 64, &got);
        if (rc != RT_OK) {
            TST_RC(rc, RT_OK);
            return false;
        }
        have += got;
    }
    CU_ASSERT_EQUAL(have, n);
    return have == n;
}

static void integrity(const char *backend)
{
    struct irun *run = calloc(1, sizeof *run);
    rt_aio_req_t reqs[32];
    uint8_t *mem = NULL;
    pthread_t reaper;
    uint64_t t0 = rt_time_milli_ts(), size = 0;
    unsigned bad = 0;
    size_t n;
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(run);
    rc = backend_ctx(&run->ctx, backend, WRITERS * WRITER_SLOTS, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    TST_RC_FATAL(rc, RT_OK);
    run->file = tst_scratch_file("integrity", (uint64_t)BLOCKS * BLOCK, DATA_FILE_FLAGS, true);
    run->expected = (size_t)BLOCKS * GENERATIONS;
    failures_init(&run->fails);
    atomic_init(&run->abort, false);

    mem = rt_mem_page_alloc((size_t)WRITERS * WRITER_SLOTS * BLOCK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mem);
    for (unsigned t = 0; t < WRITERS; t++) {
        struct writer *w = &run->writers[t];
        w->run = run;
        w->id = t;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        for (unsigned i = 0; i < WRITER_SLOTS; i++) {
            struct wslot *s = &w->slots[i];
            TST_RC_FATAL(rt_aio_req_create(&s->req), RT_OK);
            s->buf = mem + ((size_t)t * WRITER_SLOTS + i) * BLOCK;
            s->owner = w;
            atomic_init(&s->in_flight, false);
            w->free[w->n_free++] = s;
        }
    }

    CU_ASSERT_FATAL(pthread_create(&reaper, NULL, reaper_main, run) == 0);
    for (unsigned t = 0; t < WRITERS; t++)
        CU_ASSERT_FATAL(
            pthread_create(&run->writers[t].thread, NULL, writer_main, &run->writers[t]) == 0);
    for (unsigned t = 0; t < WRITERS; t++)
        pthread_join(run->writers[t].thread, NULL);
    pthread_join(reaper, NULL);
    CU_ASSERT_EQUAL(run->reaped, run->expected);
    for (unsigned t = 0; t < WRITERS; t++)
        CU_ASSERT_EQUAL(run->writers[t].n_free, WRITER_SLOTS);

    if (!atomic_load(&run->abort)) {
        /* Flush: everything completed before it is durable once it completes. */
        TST_RC(rt_aio_req_prepare_flush(run->writers[0].slots[0].req, run->file, NULL), RT_OK);
        if (run_batch(run->ctx, &run->writers[0].slots[0].req, 1)) {
            n = 99;
            TST_RC(rt_aio_req_get_rc(run->writers[0].slots[0].req, &n), RT_OK);
            CU_ASSERT_EQUAL(n, 0);
        }
        TST_RC(rt_file_get_size(run->file, &size), RT_OK);
        CU_ASSERT_EQUAL(size, (uint64_t)BLOCKS * BLOCK);

        /* Read every block back, 32 at a time: even pairs with one two-piece readv,
         * odd pairs with two reads.  The slot buffers are reused, zeroed first. */
        for (unsigned i = 0; i < 32; i++)
            reqs[i] = run->writers[i / WRITER_SLOTS].slots[i % WRITER_SLOTS].req;
        for (uint64_t first = 0; first < BLOCKS; first += 32) {
            size_t used = 0;
            memset(mem, 0, 32 * BLOCK);
            for (unsigned p = 0; p < 16; p++) {
                uint64_t idx = first + 2 * p;
                uint8_t *a = mem + (size_t)(2 * p) * BLOCK, *b = a + BLOCK;
                if (p % 2 == 0) {
                    rt_iovec_t iov[2] = {{a, BLOCK}, {b, BLOCK}};
                    TST_RC(rt_aio_req_prepare_readv(reqs[used++], run->file, idx * BLOCK, iov, 2,
                                                    NULL),
                           RT_OK);
                } else {
                    TST_RC(rt_aio_req_prepare_read(reqs[used++], run->file, idx * BLOCK, a, BLOCK,
                                                   NULL),
                           RT_OK);
                    TST_RC(rt_aio_req_prepare_read(reqs[used++], run->file, (idx + 1) * BLOCK, b,
                                                   BLOCK, NULL),
                           RT_OK);
                }
            }
            if (!run_batch(run->ctx, reqs, used))
                break;
            for (size_t i = 0; i < used; i++) {
                n = 0;
                TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_OK);
                CU_ASSERT(n == BLOCK || n == 2 * BLOCK);
            }
            for (unsigned i = 0; i < 32; i++) {
                const char *why = check_block(mem + (size_t)i * BLOCK, first + i, GENERATIONS);
                if (why != NULL) {
                    if (bad < 5)
                        fprintf(stderr, "  block %llu: %s\n", (unsigned long long)(first + i), why);
                    bad++;
                }
            }
        }
        if (bad != 0)
            fprintf(stderr, "  %u of %d blocks bad\n", bad, BLOCKS);
        CU_ASSERT_EQUAL(bad, 0);
    }
    failures_report(&run->fails);
    printf("\n    %s: %d writes by %d threads, %d blocks verified, %llu ms ", backend,
           BLOCKS * GENERATIONS, WRITERS, BLOCKS, (unsigned long long)(rt_time_milli_ts() - t0));

    TST_RC(rt_aio_ctx_destroy(run->ctx), RT_OK);
    for (unsigned t = 0; t < WRITERS; t++) {
        for (unsigned i = 0; i < WRITER_SLOTS; i++)
            TST_RC(rt_aio_req_destroy(run->writers[t].slots[i].req), RT_OK);
        pthread_mutex_destroy(&run->writers[t].lock);
        pthread_cond_destroy(&run->writers[t].cond);
    }
    TST_RC(rt_file_close(run->file), RT_OK);
    rt_mem_page_free(mem, (size_t)WRITERS * WRITER_SLOTS * BLOCK);
    free(run);
}

/* ------------------------------------------------------------------------------------ */
/* (b) Stress                                                                           */

enum { SUBMITTERS = 6, SUB_SLOTS = 16, CANCELLERS = 2, READ_BLOCKS = 256 };
enum { N_SLOTS = SUBMITTERS * SUB_SLOTS };
enum { SLOT_FREE, SLOT_IN_FLIGHT };
enum { OP_READ, OP_WRITE, OP_FLUSH };

/* The user value of a submission: slot index in the low 12 bits, the slot's
 * submission number above.  A stale or repeated return shows as a mismatch. */
static uintptr_t tag_of(unsigned index, unsigned seq)
{
    return (uintptr_t)index | ((uintptr_t)seq << 12);
}

static uint8_t read_pat(uint64_t off)
{
    return (uint8_t)((off * 0x9E3779B97F4A7C15ull) >> 56);
}

struct sslot {
    rt_aio_req_t req;
    uint8_t *buf;
    unsigned index, owner;
    atomic_uint state;
    atomic_uint seq;
    /* Set by the owner before submit, read by whoever ends the submission. */
    int op;
    uint64_t off;
};

struct srun;

struct submitter {
    pthread_t thread;
    struct srun *run;
    unsigned id;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned free[SUB_SLOTS];
    size_t n_free;
};

struct srun {
    rt_aio_ctx_t ctx;
    rt_file_t file;
    struct sslot slots[N_SLOTS];
    struct submitter subs[SUBMITTERS];
    atomic_bool stop;
    atomic_bool drain;
    atomic_uint submitters_running;
    atomic_ullong submitted, reaped, cancelled, cancel_in_progress, cancel_not_submitted;
    atomic_ullong interrupted, no_request, busy, intruder_busy, intruder_got, wakeups;
    struct failures fails;
};

/* Ends one submission, returned by wait (@a cancelled false) or cancelled with RT_OK.
 * The compare-and-swap is the heart of the test: it fails if this submission already
 * ended. */
static void end_submission(struct srun *run, rt_aio_req_t req, bool cancelled)
{
    uintptr_t tag = (uintptr_t)rt_aio_req_get_user(req);
    unsigned index = (unsigned)(tag & 0xfff), expect = SLOT_IN_FLIGHT;
    struct sslot *s;
    struct submitter *owner;
    size_t n = 0;
    int rc;

    if (index >= N_SLOTS || run->slots[index].req != req) {
        fail_note(&run->fails, "%s a request with unknown user value %#lx",
                  cancelled ? "cancelled" : "wait returned", (unsigned long)tag);
        return;
    }
    s = &run->slots[index];
    if (tag != tag_of(index, atomic_load(&s->seq)))
        fail_note(&run->fails, "slot %u: %s a stale submission", index,
                  cancelled ? "cancelled" : "wait returned");
    if (!atomic_compare_exchange_strong(&s->state, &expect, SLOT_FREE)) {
        fail_note(&run->fails, "slot %u: submission ended twice (%s after it had ended)", index,
                  cancelled ? "cancel RT_OK" : "returned by wait");
        return;
    }

    rc = rt_aio_req_get_rc(req, &n);
    if (cancelled) {
        if (rc != RT_ERR_AIO_CANCELED)
            fail_note(&run->fails, "slot %u: cancelled, but get_rc -> %s", index,
                      rt_status_name(rc));
        if (s->op == OP_READ) {
            /* "Never touches its buffer again": a late read would overwrite this. */
            memset(s->buf, 0xA5, BLOCK);
            sched_yield();
            for (unsigned i = 0; i < BLOCK; i++) {
                if (s->buf[i] != 0xA5) {
                    fail_note(&run->fails, "slot %u: buffer written after cancel RT_OK", index);
                    break;
                }
            }
        }
        atomic_fetch_add(&run->cancelled, 1);
    } else {
        if (rc != RT_OK) {
            fail_note(&run->fails, "slot %u op %d: wait returned it with get_rc -> %s", index,
                      s->op, rt_status_name(rc));
        } else if (n != (s->op == OP_FLUSH ? 0 : BLOCK)) {
            fail_note(&run->fails, "slot %u op %d: transferred %zu", index, s->op, n);
        } else if (s->op == OP_READ) {
            for (unsigned i = 0; i < BLOCK; i++) {
                if (s->buf[i] != read_pat(s->off + i)) {
                    fail_note(&run->fails, "slot %u: read at %llu returned wrong data", index,
                              (unsigned long long)s->off);
                    break;
                }
            }
        }
        atomic_fetch_add(&run->reaped, 1);
    }

    owner = &run->subs[s->owner];
    pthread_mutex_lock(&owner->lock);
    owner->free[owner->n_free++] = index;
    pthread_cond_signal(&owner->cond);
    pthread_mutex_unlock(&owner->lock);
}

static void *stress_submitter(void *arg)
{
    struct submitter *sub = arg;
    struct srun *run = sub->run;
    uint64_t rng = 0xabcdefull + sub->id * 0x9E3779B97F4A7C15ull;

    while (!atomic_load(&run->stop)) {
        rt_aio_req_t reqs[8];
        unsigned picked[8];
        size_t want = 1 + (size_t)(rng_next(&rng) % 8), k = 0;
        int rc;

        pthread_mutex_lock(&sub->lock);
        if (sub->n_free == 0)
            cond_wait_ms(&sub->cond, &sub->lock, 20);
        while (k < want && sub->n_free > 0)
            picked[k++] = sub->free[--sub->n_free];
        pthread_mutex_unlock(&sub->lock);
        if (k == 0)
            continue;

        for (size_t i = 0; i < k; i++) {
            struct sslot *s = &run->slots[picked[i]];
            unsigned seq = atomic_fetch_add(&s->seq, 1) + 1;
            void *user = (void *)tag_of(s->index, seq);
            unsigned dice = (unsigned)(rng_next(&rng) % 100);

            if (dice < 70) {
                s->op = OP_READ;
                s->off = (rng_next(&rng) % READ_BLOCKS) * BLOCK;
                rc = rt_aio_req_prepare_read(s->req, run->file, s->off, s->buf, BLOCK, user);
            } else if (dice < 97) {
                s->op = OP_WRITE;
                s->off = (uint64_t)(READ_BLOCKS + s->index) * BLOCK;
                memset(s->buf, (int)(seq & 0xff), BLOCK);
                rc = rt_aio_req_prepare_write(s->req, run->file, s->off, s->buf, BLOCK, user);
            } else {
                s->op = OP_FLUSH;
                rc = rt_aio_req_prepare_flush(s->req, run->file, user);
            }
            if (rc != RT_OK)
                fail_note(&run->fails, "slot %u: prepare -> %s", s->index, rt_status_name(rc));
            atomic_store(&s->state, SLOT_IN_FLIGHT);
            reqs[i] = s->req;
        }
        /* Counted before the call: a completion may be ended before submit returns. */
        atomic_fetch_add(&run->submitted, k);
        rc = rt_aio_ctx_submit(run->ctx, reqs, k);
        if (rc != RT_OK) {
            /* Capacity equals the slot count, so even RT_ERR_AIO_INSUFFICIENT_RESOURCES
             * is a bug here.  Nothing was submitted: take the slots back. */
            fail_note(&run->fails, "submitter %u: submit of %zu -> %s", sub->id, k,
                      rt_status_name(rc));
            pthread_mutex_lock(&sub->lock);
            for (size_t i = 0; i < k; i++) {
                atomic_store(&run->slots[picked[i]].state, SLOT_FREE);
                sub->free[sub->n_free++] = picked[i];
            }
            pthread_mutex_unlock(&sub->lock);
            atomic_fetch_sub(&run->submitted, k);
            sleep_us(1000);
        }
    }
    atomic_fetch_sub(&run->submitters_running, 1);
    return NULL;
}

static void *stress_canceller(void *arg)
{
    struct srun *run = arg;
    uint64_t rng = (uint64_t)(uintptr_t)&rng ^ 0x5555ull;
    unsigned spins = 0;

    while (!atomic_load(&run->stop)) {
        struct sslot *s = &run->slots[rng_next(&rng) % N_SLOTS];
        int rc;

        if (atomic_load(&s->state) != SLOT_IN_FLIGHT) {
            if (++spins % 64 == 0)
                sched_yield();
            continue;
        }
        rc = rt_aio_req_cancel(s->req);
        if (rc == RT_OK)
            end_submission(run, s->req, true);
        else if (rc == RT_ERR_AIO_IN_PROGRESS)
            atomic_fetch_add(&run->cancel_in_progress, 1);
        else if (rc == RT_ERR_AIO_NOT_SUBMITTED)
            atomic_fetch_add(&run->cancel_not_submitted, 1);
        else
            fail_note(&run->fails, "cancel -> %s", rt_status_name(rc));
    }
    return NULL;
}

/* Wakes the waiter at random moments and now and then tries to wait itself, which
 * must either be refused (BUSY) or, in a gap between the waiter's calls, legitimately
 * take completions, which it then ends like the waiter would. */
static void *stress_waker(void *arg)
{
    struct srun *run = arg;
    uint64_t rng = 0x77ull;
    unsigned round = 0;

    while (!atomic_load(&run->stop)) {
        int rc = rt_aio_ctx_wakeup(run->ctx);
        if (rc != RT_OK)
            fail_note(&run->fails, "wakeup -> %s", rt_status_name(rc));
        atomic_fetch_add(&run->wakeups, 1);
        if (++round % 16 == 0) {
            rt_aio_req_t out[8];
            uint32_t got = 77;
            rc = rt_aio_ctx_wait(run->ctx, 1, 0, out, 8, &got);
            if (rc == RT_ERR_AIO_BUSY) {
                atomic_fetch_add(&run->intruder_busy, 1);
                if (got != 0)
                    fail_note(&run->fails, "BUSY wait set *got to %u", got);
            } else if (rc == RT_OK || rc == RT_ERR_TIMEOUT || rc == RT_ERR_INTERRUPTED ||
                       rc == RT_ERR_AIO_NO_REQUEST) {
                if (got > 8) {
                    fail_note(&run->fails, "intruding wait set *got to %u", got);
                    got = 0;
                }
                for (uint32_t i = 0; i < got; i++)
                    end_submission(run, out[i], false);
                atomic_fetch_add(&run->intruder_got, got);
            } else {
                fail_note(&run->fails, "intruding wait -> %s", rt_status_name(rc));
            }
        }
        sleep_us((unsigned)(rng_next(&rng) % 2000));
    }
    return NULL;
}

static void *stress_waiter(void *arg)
{
    struct srun *run = arg;
    uint64_t drain_deadline = 0;
    rt_aio_req_t out[64];

    for (;;) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(run->ctx, 1, 50, out, 64, &got);

        if (got > 64) {
            fail_note(&run->fails, "wait set *got to %u with room for 64", got);
            break;
        }
        for (uint32_t i = 0; i < got; i++)
            end_submission(run, out[i], false);
        switch (rc) {
        case RT_OK:
        case RT_ERR_TIMEOUT: break;
        case RT_ERR_INTERRUPTED: atomic_fetch_add(&run->interrupted, 1); break;
        case RT_ERR_AIO_NO_REQUEST:
            atomic_fetch_add(&run->no_request, 1);
            if (got != 0)
                fail_note(&run->fails, "NO_REQUEST wait returned %u requests", got);
            sched_yield();
            break;
        case RT_ERR_AIO_BUSY: /* the waker's intruding wait was inside */
            atomic_fetch_add(&run->busy, 1);
            break;
        default: fail_note(&run->fails, "wait -> %s", rt_status_name(rc)); return NULL;
        }
        if (atomic_load(&run->drain)) {
            unsigned long long ended = atomic_load(&run->reaped) + atomic_load(&run->cancelled);
            if (drain_deadline == 0)
                drain_deadline = rt_time_milli_ts() + LONG_MS;
            if (atomic_load(&run->submitters_running) == 0 && ended == atomic_load(&run->submitted))
                break;
            if (rt_time_milli_ts() > drain_deadline) {
                fail_note(&run->fails, "%llu of %llu submissions never ended",
                          (unsigned long long)atomic_load(&run->submitted) - ended,
                          (unsigned long long)atomic_load(&run->submitted));
                break;
            }
        }
    }
    return NULL;
}

static void stress(const char *backend)
{
    struct srun *run = calloc(1, sizeof *run);
    pthread_t waiter, waker, cancellers[CANCELLERS];
    rt_aio_req_t leftover[4];
    uint8_t *mem, *init;
    uint32_t got = 77;
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(run);
    failures_init(&run->fails);
    TST_RC_FATAL(backend_ctx(&run->ctx, backend, N_SLOTS, 0), RT_OK);
    run->file = tst_scratch_file("stress", (uint64_t)(READ_BLOCKS + N_SLOTS) * BLOCK,
                                 DATA_FILE_FLAGS, true);

    /* The read region holds a known pattern, so every read can be checked. */
    init = rt_mem_page_alloc((size_t)READ_BLOCKS * BLOCK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(init);
    for (size_t i = 0; i < (size_t)READ_BLOCKS * BLOCK; i++)
        init[i] = read_pat(i);
    TST_RC_FATAL(rt_file_write_at(run->file, 0, init, (size_t)READ_BLOCKS * BLOCK, NULL), RT_OK);
    rt_mem_page_free(init, (size_t)READ_BLOCKS * BLOCK);

    mem = rt_mem_page_alloc((size_t)N_SLOTS * BLOCK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mem);
    atomic_init(&run->stop, false);
    atomic_init(&run->drain, false);
    atomic_init(&run->submitters_running, SUBMITTERS);
    for (unsigned t = 0; t < SUBMITTERS; t++) {
        struct submitter *sub = &run->subs[t];
        sub->run = run;
        sub->id = t;
        pthread_mutex_init(&sub->lock, NULL);
        pthread_cond_init(&sub->cond, NULL);
        for (unsigned i = 0; i < SUB_SLOTS; i++) {
            unsigned index = t * SUB_SLOTS + i;
            struct sslot *s = &run->slots[index];
            TST_RC_FATAL(rt_aio_req_create(&s->req), RT_OK);
            s->buf = mem + (size_t)index * BLOCK;
            s->index = index;
            s->owner = t;
            atomic_init(&s->state, SLOT_FREE);
            atomic_init(&s->seq, 0);
            sub->free[sub->n_free++] = index;
        }
    }

    CU_ASSERT_FATAL(pthread_create(&waiter, NULL, stress_waiter, run) == 0);
    for (unsigned t = 0; t < SUBMITTERS; t++)
        CU_ASSERT_FATAL(
            pthread_create(&run->subs[t].thread, NULL, stress_submitter, &run->subs[t]) == 0);
    for (unsigned t = 0; t < CANCELLERS; t++)
        CU_ASSERT_FATAL(pthread_create(&cancellers[t], NULL, stress_canceller, run) == 0);
    CU_ASSERT_FATAL(pthread_create(&waker, NULL, stress_waker, run) == 0);

    sleep_us(stress_ms * 1000u);

    atomic_store(&run->stop, true);
    for (unsigned t = 0; t < SUBMITTERS; t++)
        pthread_join(run->subs[t].thread, NULL);
    for (unsigned t = 0; t < CANCELLERS; t++)
        pthread_join(cancellers[t], NULL);
    pthread_join(waker, NULL);
    atomic_store(&run->drain, true);
    pthread_join(waiter, NULL);

    failures_report(&run->fails);
    printf("\n    %s: %llu submitted, %llu returned by wait (%llu by an intruding wait), "
           "%llu cancelled; cancel said in-progress %llu, not-submitted %llu; "
           "%llu wakeups, %llu interrupted waits, %llu no-request, %llu busy (waiter), "
           "%llu busy (intruder) ",
           backend, (unsigned long long)run->submitted, (unsigned long long)run->reaped,
           (unsigned long long)run->intruder_got, (unsigned long long)run->cancelled,
           (unsigned long long)run->cancel_in_progress,
           (unsigned long long)run->cancel_not_submitted, (unsigned long long)run->wakeups,
           (unsigned long long)run->interrupted, (unsigned long long)run->no_request,
           (unsigned long long)run->busy, (unsigned long long)run->intruder_busy);

    CU_ASSERT(atomic_load(&run->submitted) > 0);
    CU_ASSERT_EQUAL(atomic_load(&run->submitted),
                    atomic_load(&run->reaped) + atomic_load(&run->cancelled));
    for (unsigned i = 0; i < N_SLOTS; i++) {
        if (atomic_load(&run->slots[i].state) != SLOT_FREE) {
            fprintf(stderr, "  slot %u never came back\n", i);
            CU_FAIL("a submission never ended");
        }
    }

    /* Nothing outstanding now; at most one wakeup may still be pending. */
    rc = rt_aio_ctx_wait(run->ctx, 1, 0, leftover, 4, &got);
    if (rc == RT_ERR_INTERRUPTED) {
        CU_ASSERT_EQUAL(got, 0);
        got = 77;
        rc = rt_aio_ctx_wait(run->ctx, 1, 0, leftover, 4, &got);
    }
    TST_RC(rc, RT_ERR_AIO_NO_REQUEST);
    CU_ASSERT_EQUAL(got, 0);
    TST_RC(rt_aio_ctx_destroy(run->ctx), RT_OK);

    for (unsigned i = 0; i < N_SLOTS; i++)
        TST_RC(rt_aio_req_destroy(run->slots[i].req), RT_OK);
    for (unsigned t = 0; t < SUBMITTERS; t++) {
        pthread_mutex_destroy(&run->subs[t].lock);
        pthread_cond_destroy(&run->subs[t].cond);
    }
    TST_RC(rt_file_close(run->file), RT_OK);
    rt_mem_page_free(mem, (size_t)N_SLOTS * BLOCK);
    free(run);
}

/* ------------------------------------------------------------------------------------ */

static void test_integrity_linux_aio(void)
{
    integrity("linux-aio");
}

static void test_integrity_threads(void)
{
    integrity("threads");
}

static void test_integrity_io_uring(void)
{
    integrity("io_uring");
}

static void test_stress_linux_aio(void)
{
    stress("linux-aio");
}

static void test_stress_threads(void)
{
    stress("threads");
}

static void test_stress_io_uring(void)
{
    stress("io_uring");
}

int main(void)
{
    static const CU_TestFunc integrity_tests[N_BACKENDS] = {
        test_integrity_linux_aio, test_integrity_threads, test_integrity_io_uring};
    static const CU_TestFunc stress_tests[N_BACKENDS] = {test_stress_linux_aio, test_stress_threads,
                                                         test_stress_io_uring};
    const char *soak = getenv("TST_SOAK_SECONDS");
    unsigned available = 0;

    if (soak != NULL && soak[0] != '\0') {
        unsigned long seconds = strtoul(soak, NULL, 10);
        if (seconds == 0 || seconds > 7 * 24 * 3600) {
            fprintf(stderr, "TST_SOAK_SECONDS must be a number of seconds, not '%s'\n", soak);
            return 1;
        }
        stress_ms = (unsigned)seconds * 1000u;
    }

    for (unsigned b = 0; b < N_BACKENDS; b++) {
        CU_pSuite suite = tst_backend_suite("aio-integrity", backend_names[b]);

        if (suite == NULL)
            continue;
        available++;
        if (CU_add_test(suite, "integrity", integrity_tests[b]) == NULL ||
            CU_add_test(suite, "stress", stress_tests[b]) == NULL) {
            fprintf(stderr, "CUnit: %s\n", CU_get_error_msg());
            return 1;
        }
    }
    if (available == 0) {
        printf("SKIP: no AIO backend is available on this host\n");
        return TST_SKIP;
    }
    /* A hang fails the run instead of stalling it (SIGALRM's default terminates). */
    alarm(60 + available * (stress_ms / 1000u + 2 * LONG_MS / 1000u));
    return tst_run();
}
