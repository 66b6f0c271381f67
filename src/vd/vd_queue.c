/*
 * The request engine: every read, write and flush of every image goes through here,
 * the synchronous calls included (they run on a private queue of the image).
 *
 * A guest request (struct vd_io) walks its byte range with a cursor.  At each step the
 * driver maps the range under the cursor and the engine turns the answer into one
 * kernel request (struct vd_op) or does it inline:
 *
 *   read    data -> read op (into the guest's buffers, or a bounce chunk)
 *           zero / compressed -> filled inline, straight into the guest's buffers
 *           (zeros, inflated bytes)
 *           unallocated -> zeros, and for what the backing image has, a read of the
 *           backing image on this same queue (a child request, below)
 *   write   data -> write op (from the guest's buffers, or a bounce chunk whose partial
 *           first or last sector is read first: the op's RMW phases)
 *           anything else -> alloc() a unit: an allocation job (struct vd_job) whose
 *           ops write the whole unit, the guest's bytes and what the guest saw there
 *           before (zeros from one shared zero chunk, or the old contents in a chunk:
 *           read by the op itself first from this image's file, by a child request
 *           from the backing image, or inflated; the op's fill phases); adjacent new
 *           units given adjacent space go in one op; the job ends when its last op
 *           does, and only then does the driver learn the outcome (alloc_done)
 *   zero,   whole units -> the driver's zero(): metadata (QCOW2 zero clusters) or the
 *   discard file system (raw: fallocate), inline; what it cannot do -> for a zero, the
 *           write path with zeros for the guest's bytes (the shared zero chunk), except
 *           what already reads as zeros; for a discard, nothing
 *   flush   wait for the allocation jobs begun before it -> fsync op -> driver commit
 *           -> fsync op
 *
 * Child requests.  A backing image is read through this queue: a read request on it
 * (struct vd_io with parent set) that the parent request, or the parent's write op
 * waiting to be filled, waits for; its completion continues them instead of calling
 * back.  Such a write op holds its op meanwhile, so the pool has CHILD_RESERVE ops more
 * than the depth that only child requests may take: the reads that fills wait for can
 * always run.
 *
 * Bounded memory.  Ops are a fixed pool (depth + CHILD_RESERVE) and each holds at most
 * one chunk of CHUNK bytes, taken from the queue's chunk pool; a request holds only its
 * own small struct and a copy of its iovec array; a job only its struct.  So engine
 * memory per queue is at most (depth + 1) x (CHUNK + an op's iovec array) plus the
 * shared zero chunk,
 * whatever the request sizes (a 1 GiB unaligned request included) and the unit size (a
 * VDI block of 64 MiB is written by several ops of at most MAX_OP_BYTES, none copying
 * more than a chunk).  A request whose next step finds no free op waits on the ready
 * list and continues when one comes back.
 *
 * Ordering.  The kernel reorders freely, so two requests must not be in flight together
 * when one could clobber the other beyond the bytes it was asked to write:
 *   - a write that allocates writes its whole unit (old contents around the guest
 *     bytes), and
 *   - a bounced unaligned write rewrites whole sectors around its bytes.
 * Such a request is "exclusive" over its widened range [lo, hi).  Every image keeps its
 * requests in arrival order; a request starts only when no earlier request overlapping
 * it is exclusive, and an exclusive one only when no earlier overlapping request at all
 * is left.  Plain aligned reads and writes of allocated data never wait.  A zero or
 * discard request is exclusive over the units it touches, and counts as allocating.
 *
 * Dependents of an allocation.  The in-memory map points at a unit as soon as alloc()
 * reserved it, before its data is written.  A write admitted meanwhile would see "data"
 * and go in as a plain write into a unit that the allocation's failure (a full disk)
 * would then forget.  So a write overlapping an earlier allocating request counts as
 * allocating too: it waits for that request, and when it starts it maps again and
 * follows the outcome (writes in place, or allocates the unit itself).
 *
 * Durability.  Allocation metadata reaches the file only at a flush (or a metadata
 * writeback, below, which runs the same stages).  The flush first
 * waits for every allocation job begun before it (so the driver never has to commit
 * around a hole, which VDI's header count cannot describe), then FLUSH1 makes their
 * data durable, then the driver writes the metadata of exactly the allocations whose
 * data was complete before FLUSH1 started (tracked by a sequence number), then FLUSH2.
 * No crash, of the process or of the machine, can leave metadata pointing at unwritten
 * data.  An fsync that fails poisons the image: Linux reports a writeback error once
 * and then drops the pages, so a later fsync would succeed over lost data; every later
 * write and flush of the image fails with the same status until it is reopened (QEMU's
 * rule after fdatasync fails).  So does a commit that fails, except for a metadata
 * write that found the disk full: it wrote nothing, the commit's steps are ordered so
 * what did reach the file is consistent, and the next flush tries again.
 *
 * Metadata writeback.  Allocations keep the driver's tables dirty and unevictable until
 * a commit.  When the driver says what it holds is over its budget (needs_writeback:
 * QCOW2, more L2 tables in memory than its cache size), the write request that finds
 * it so runs the flush stages after its own before it completes: the commit makes the
 * tables clean and evictable.  One at a time per image; no request of the caller's
 * outlives its callback.
 *
 * Metadata loads.  A map() answer that needs a table the driver does not hold (a QCOW2
 * L2 table not in its cache) is not read on this thread: the driver describes the read
 * (struct vd_load), the engine issues it as an op and parks the request on it; another
 * request needing the same load parks on the same one.  When the read is back the
 * driver checks and keeps the bytes (load_done), and every parked request steps again,
 * or fails with the load.  A request maps synchronously once right after its load, so
 * a cache too small for the requests in flight cannot evict tables faster than they
 * are used (no livelock; at worst one blocking read).  Admission never loads: a write
 * whose map needs a load counts as allocating (safe, and only more careful).
 */
#include "config.h"

#include <rt/fileaio.h>
#include <rt/mem.h>
#include <rt/time.h>

#include <stdlib.h>
#include <string.h>

#include "internal/handle_pool.h"
#include "internal/magic.h"
#include "vd/vd_internal.h"

/* The longest single kernel request the engine issues. */
#define MAX_OP_BYTES (4u << 20)
/* Bounce and fill buffers: the most an op copies. */
#define CHUNK (256u << 10)
/* The kernel's limit on iovec entries per request. */
#define MAX_OP_IOV 1024u
/* Allocations one op may write (adjacent new units coalesce into one op). */
#define MAX_OP_JOBS 64u
/* Ops beyond the depth, kept for the engine's reads of backing images (op_available). */
#define CHILD_RESERVE 1u
#define DEFAULT_DEPTH 128u
#define MAX_DEPTH 4096u
#define SYNC_DEPTH 32u
#define INLINE_IOV 4u

enum io_stage { STAGE_MAIN, STAGE_FLUSH_WAIT, STAGE_FLUSH1, STAGE_FLUSH2, STAGE_DONE };
enum op_kind { OP_READ, OP_WRITE, OP_FLUSH };
/* What an op does when its transfer completes. */
enum op_phase {
    PHASE_PLAIN,     /* done */
    PHASE_COPY_OUT,  /* a bounced read: copy the guest's part out of the chunk */
    PHASE_RMW_HEAD,  /* read the first sector of the window, then the tail or write */
    PHASE_RMW_TAIL,  /* read the last sector, then write */
    PHASE_LOAD,      /* a metadata load: hand the bytes to the driver */
    PHASE_FILL,      /* a write's old contents read into its chunk: the next, or write */
};

/* What step() did with the op it was given. */
enum step_result {
    STEP_INLINE = 0, /* the step needed no op (zeros, a backing read) */
    STEP_OP = 1,     /* the op is filled for the request */
    STEP_LOAD = 2,   /* the op is filled as a metadata load; the request waits for it */
    STEP_PARKED = 3, /* the request waits for a load already in flight; op unused */
};

struct vd_job;

struct vd_io {
    struct vd_io *next_active, *prev_active; /* the image's arrival-order list */
    struct vd_io *next_ready;                /* the queue's ready or done list, or the
                                                image's flush waiters */
    bool on_ready, running;
    bool parked;      /* waiting for a metadata load (on its waiter list) */
    /* A read of a backing image made by the engine for @a parent (the guest's bytes
     * of an unallocated range), or for @a parent_op (the old contents a write of a new
     * unit needs): no callback, it continues them. */
    struct vd_io *parent;
    struct vd_op *parent_op;
    bool just_loaded; /* the next map may not ask for a load again */
    bool writeback;   /* a write running the flush stages for the metadata budget */
    rt_vd_t vd;
    struct rt_vd_queue *queue;
    int kind;
    uint64_t off, len;
    rt_iovec_t *iov; /* the guest's buffers (copied array) */
    unsigned iovcnt;
    rt_iovec_t iov_inline[INLINE_IOV];
    rt_vd_done_t *done;
    void *user;
    /* The caller's flags (RT_VD_ZERO_* for VD_IO_ZERO, RT_VD_WRITE_* for a write); and
     * while zeros are being written where the driver could not record them, where that
     * stretch ends (see zero_step). */
    uint32_t flags;
    uint64_t zero_write_end;
    bool made_job; /* began an allocation job */

    /* Ordering. */
    bool exclusive;
    bool allocates; /* decided at admission: may allocate units */
    uint64_t lo, hi;
    /* O_DIRECT and unaligned (offset, length or buffers): data ops go through chunks. */
    bool bounce;

    enum io_stage stage;
    uint64_t cursor, cursor_end;
    struct vd_job *job; /* the allocation whose ops are still being made */
    uint32_t pending;   /* ops in flight */
    int status;
    uint64_t flush_seq; /* FLUSH1: allocations up to this are committed */
    uint64_t job_mark;  /* FLUSH_WAIT: jobs numbered up to this must end first */
};

/* A FIFO of requests, linked through next_ready (a request is on one at a time). */
struct io_list {
    struct vd_io *head, *tail;
};

/* An allocation in progress: alloc() reserved a unit; its ops write all of it. */
struct vd_job {
    struct vd_job *next, *prev; /* the image's unfinished jobs, oldest first */
    struct vd_io *io;
    uint64_t number; /* creation order within the image */
    struct vd_alloc alloc;
    struct vd_map old;           /* what the unit held, host_off at the unit's start */
    uint64_t guest_lo, guest_hi; /* the guest's bytes in the unit */
    uint64_t emit;               /* virtual offset of the next byte to put in an op */
    uint32_t ops_pending;
    bool emitted; /* every op made, or the job abandoned */
    int status;
};

/* A metadata load in flight: its one read, and the requests waiting for it. */
struct vd_load_wait {
    struct vd_load_wait *next; /* the image's loads in flight, or the queue's spares */
    rt_vd_t vd;
    struct vd_load load;
    struct vd_io *waiters; /* linked through next_ready */
    uint8_t *buf;          /* the aligned window read; the load starts at buf + skip */
    size_t buf_len;
    uint64_t skip;
};

struct vd_op {
    struct vd_op *next_free;
    struct vd_load_wait *load; /* PHASE_LOAD: the load it reads (io is NULL) */
    rt_aio_req_t req;
    struct vd_io *io;
    /* The allocations it writes part of, in unit order: several when adjacent new
     * units were given adjacent space. */
    struct vd_job *jobs[MAX_OP_JOBS];
    unsigned njobs;
    int kind;
    enum op_phase phase;
    rt_file_t file; /* which of the image's files */
    /* Written with RT_AIO_REQ_F_DSYNC: its failure may be the report of an earlier
     * write's lost write-back (the kernel gives it once per file), so it poisons the
     * image as a failed flush does. */
    bool dsync;
    uint64_t host_off;
    uint64_t len;
    rt_iovec_t *iov;
    unsigned iovcnt, iovcap;
    uint8_t *chunk; /* from the queue's pool, or NULL */
    /* A bounced op: the chunk holds the aligned window [win_lo, win_lo + win_len) of
     * the guest disk, stored at host_base; it covers the guest's bytes
     * [guest_lo, guest_hi) of it.  A plain data op: guest_lo and guest_hi only. */
    uint64_t win_lo, win_len, host_base, guest_lo, guest_hi;
    bool rmw_tail; /* after the head read (or instead of it), read the last sector */
    /* A write of a new unit: the chunk's regions that get the unit's old contents
     * before the write (read from this image, a backing image, or inflated). */
    struct op_fill {
        uint8_t *buf;
        uint64_t voff, len;
    } fill[2];
    unsigned nfill, fill_next;
    struct vd_job *fill_job;
    rt_iovec_t fill_iov; /* PHASE_FILL: the read in flight */
    rt_file_t write_file; /* where the write goes once filled */
    uint64_t write_host;
};

struct rt_vd_queue {
    uint32_t magic;
    void *next_free;
    rt_aio_ctx_t ctx;
    uint32_t depth;
    struct vd_op *ops;
    struct vd_op *free_ops;
    uint32_t nops, nfree_ops; /* depth + CHILD_RESERVE ops */
    uint32_t in_flight;
    uint32_t ios;  /* accepted, callback not yet run */
    bool running;  /* inside rt_vd_queue_run(): callbacks may not destroy the queue */
    struct io_list ready; /* running requests that can take another step */
    struct io_list ready_children; /* the same, of the engine's backing reads */
    struct io_list done;  /* finished requests whose callbacks are due */
    rt_aio_req_t *batch;
    uint32_t batch_len;
    rt_aio_req_t *reaped;
    /* Chunks not in use (linked through their first bytes), and how many exist. */
    void *free_chunks;
    uint32_t chunks;
    uint8_t *zeros; /* one chunk of zeros, read-only, shared by every op */
    struct vd_job *free_jobs;
    /* Request records not in use (linked through next_ready), at most depth of them
     * kept: a steady stream of requests allocates nothing. */
    struct vd_io *free_ios;
    uint32_t nfree_ios;
    struct vd_load_wait *free_loads;
};

static struct rt__handle_pool queue_pool = RT__HANDLE_POOL_INIT(struct rt_vd_queue, next_free);

static bool queue_live(struct rt_vd_queue *q)
{
    return q != NULL && q->magic == RT__MAGIC_VD_QUEUE;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Does the request change guest data (and so take the write path's rules)? */
static bool changes_data(int kind)
{
    return kind == VD_IO_WRITE || kind == VD_IO_ZERO || kind == VD_IO_DISCARD;
}

static bool zeroing(const struct vd_io *io)
{
    return io->kind == VD_IO_ZERO || io->kind == VD_IO_DISCARD;
}

/* Where the step in progress must stop: the request's end, or for a zero request the
 * end of the stretch being written with zeros. */
static uint64_t step_end(const struct vd_io *io)
{
    return zeroing(io) ? io->zero_write_end : io->cursor_end;
}

static uint64_t round_down(uint64_t v, uint64_t unit)
{
    return v - v % unit;
}

static uint64_t round_up(uint64_t v, uint64_t unit)
{
    return round_down(v + unit - 1, unit);
}

/* ---------------------------------------------------------------------------------- */
/* Scatter/gather helpers over the guest's buffers (guest offset io->off is byte 0). */

/* Describes [skip, skip + len) of @a iov in at most @a room entries of @a out; returns
 * the entries used and, in *@a taken, the bytes they cover (less than @a len when the
 * room ran out). */
static unsigned iov_slice(const rt_iovec_t *iov, unsigned iovcnt, uint64_t skip, uint64_t len,
                          rt_iovec_t *out, unsigned room, uint64_t *taken)
{
    unsigned n = 0;
    uint64_t got = 0;
    for (unsigned i = 0; i < iovcnt && len > 0 && n < room; i++) {
        if (skip >= iov[i].len) {
            skip -= iov[i].len;
            continue;
        }
        size_t take = (size_t)min_u64(iov[i].len - skip, len);
        out[n].base = (uint8_t *)iov[i].base + skip;
        out[n].len = take;
        n++;
        len -= take;
        got += take;
        skip = 0;
    }
    *taken = got;
    return n;
}

/* Copies between a flat buffer and [skip, skip + len) of @a iov (flat NULL: zeros). */
static void iov_copy(const rt_iovec_t *iov, unsigned iovcnt, uint64_t skip, uint8_t *flat,
                     uint64_t len, bool to_iov)
{
    for (unsigned i = 0; i < iovcnt && len > 0; i++) {
        if (skip >= iov[i].len) {
            skip -= iov[i].len;
            continue;
        }
        size_t take = (size_t)min_u64(iov[i].len - skip, len);
        uint8_t *piece = (uint8_t *)iov[i].base + skip;
        if (flat == NULL)
            memset(piece, 0, take);
        else if (to_iov)
            memcpy(piece, flat, take);
        else
            memcpy(flat, piece, take);
        if (flat != NULL)
            flat += take;
        len -= take;
        skip = 0;
    }
}

static bool iov_aligned(const rt_iovec_t *iov, unsigned iovcnt, uint32_t align)
{
    for (unsigned i = 0; i < iovcnt; i++)
        if ((uintptr_t)iov[i].base % align != 0 || iov[i].len % align != 0)
            return false;
    return true;
}

/* ---------------------------------------------------------------------------------- */
/* Lists. */

static void list_push(struct io_list *list, struct vd_io *io)
{
    io->next_ready = NULL;
    if (list->tail != NULL)
        list->tail->next_ready = io;
    else
        list->head = io;
    list->tail = io;
}

static struct vd_io *list_pop(struct io_list *list)
{
    struct vd_io *io = list->head;
    if (io != NULL) {
        list->head = io->next_ready;
        if (list->head == NULL)
            list->tail = NULL;
    }
    return io;
}

static void ready_push(struct rt_vd_queue *q, struct vd_io *io)
{
    if (!io->on_ready) {
        io->on_ready = true;
        list_push(io->parent != NULL ? &q->ready_children : &q->ready, io);
    }
}

/* Can @a io have an op now?  The last free op is kept for the engine's reads of
 * backing images: a write op waiting for one holds its op, and if every op did, the
 * reads could never run. */
static bool op_available(const struct rt_vd_queue *q, const struct vd_io *io)
{
    return q->nfree_ops > CHILD_RESERVE || (q->nfree_ops > 0 && io->parent != NULL);
}

/* The next ready request that can have an op: the engine's backing reads first (they
 * unblock others). */
static struct vd_io *ready_pop(struct rt_vd_queue *q)
{
    struct vd_io *io = NULL;
    if (q->nfree_ops > 0 && q->ready_children.head != NULL)
        io = list_pop(&q->ready_children);
    else if (q->nfree_ops > CHILD_RESERVE)
        io = list_pop(&q->ready);
    if (io != NULL)
        io->on_ready = false;
    return io;
}

static bool work_ready(const struct rt_vd_queue *q)
{
    return (q->nfree_ops > 0 && q->ready_children.head != NULL) ||
           (q->nfree_ops > CHILD_RESERVE && q->ready.head != NULL);
}

static void active_append(rt_vd_t vd, struct vd_io *io)
{
    io->next_active = NULL;
    io->prev_active = vd->active_tail;
    if (vd->active_tail != NULL)
        vd->active_tail->next_active = io;
    else
        vd->active_head = io;
    vd->active_tail = io;
}

static void active_remove(rt_vd_t vd, struct vd_io *io)
{
    if (io->prev_active != NULL)
        io->prev_active->next_active = io->next_active;
    else
        vd->active_head = io->next_active;
    if (io->next_active != NULL)
        io->next_active->prev_active = io->prev_active;
    else
        vd->active_tail = io->prev_active;
}

/* ---------------------------------------------------------------------------------- */
/* Chunks and jobs: per-queue pools, so no op allocates. */

static uint8_t *chunk_get(struct rt_vd_queue *q)
{
    void *chunk = q->free_chunks;
    if (chunk != NULL) {
        memcpy(&q->free_chunks, chunk, sizeof(void *));
        return chunk;
    }
    chunk = rt_mem_page_alloc(CHUNK);
    if (chunk != NULL)
        q->chunks++;
    return chunk;
}

static void chunk_put(struct rt_vd_queue *q, uint8_t *chunk)
{
    memcpy(chunk, &q->free_chunks, sizeof(void *));
    q->free_chunks = chunk;
}

static struct vd_job *job_get(struct rt_vd_queue *q)
{
    struct vd_job *job = q->free_jobs;
    if (job != NULL)
        q->free_jobs = job->next;
    else
        job = malloc(sizeof(*job));
    if (job != NULL)
        memset(job, 0, sizeof(*job));
    return job;
}

static void job_put(struct rt_vd_queue *q, struct vd_job *job)
{
    job->next = q->free_jobs;
    q->free_jobs = job;
}

/* ---------------------------------------------------------------------------------- */
/* Admission and ordering. */

static bool overlaps(const struct vd_io *a, uint64_t lo, uint64_t hi)
{
    return a->lo < hi && lo < a->hi;
}

static bool conflicts(const struct vd_io *earlier, const struct vd_io *io)
{
    if (earlier->kind == VD_IO_FLUSH || io->kind == VD_IO_FLUSH)
        return false;
    if (!earlier->exclusive && !io->exclusive)
        return false;
    return overlaps(earlier, io->lo, io->hi);
}

/* Does the aligned window of a write need units allocated?  From the in-memory map;
 * a request that turns out not to allocate when it runs was only more careful than it
 * needed to be. */
static int write_allocates(rt_vd_t vd, uint64_t lo, uint64_t hi, bool *allocates)
{
    *allocates = false;
    if (!(vd->driver->caps & VD_CAP_ALLOC))
        return RT_OK;
    for (uint64_t pos = lo; pos < hi;) {
        struct vd_map map = {0};
        struct vd_load load;
        int rc = vd->driver->map(vd, pos, hi - pos, &map, &load);
        if (rc < 0)
            return rc;
        if (rc == VD_MAP_NEEDS_LOAD || map.kind != VD_MAP_DATA || map.shared) {
            *allocates = true;
            return RT_OK;
        }
        pos += map.length;
    }
    /* The map may point at a unit whose allocation is still in flight (its failure
     * would take the mapping back): depend on it. */
    uint64_t ulo = round_down(lo, vd->alloc_unit), uhi = round_up(hi, vd->alloc_unit);
    for (const struct vd_io *e = vd->active_tail; e != NULL; e = e->prev_active)
        if (e->allocates && overlaps(e, ulo, uhi)) {
            *allocates = true;
            break;
        }
    return RT_OK;
}

static void start_stage(struct vd_io *io, enum io_stage stage);

static void try_start(struct vd_io *io)
{
    for (struct vd_io *e = io->prev_active; e != NULL; e = e->prev_active)
        if (conflicts(e, io))
            return;
    io->running = true;
    start_stage(io, io->kind == VD_IO_FLUSH ? STAGE_FLUSH_WAIT : STAGE_MAIN);
    ready_push(io->queue, io);
}

/* A zero or discard request changes whole units in the driver's metadata and writes
 * zeros into others, possibly through bounced sectors: it is exclusive over every unit
 * it touches, and counts as allocating, so that a later write over it maps again once
 * it is done instead of trusting a mapping it is about to change. */
static int plan_zero(struct vd_io *io)
{
    rt_vd_t vd = io->vd;
    uint64_t grain = max_u64(vd->align, vd->alloc_unit ? vd->alloc_unit : 1);
    io->lo = round_down(io->off, grain);
    io->hi = round_up(io->off + io->len, grain);
    io->exclusive = true;
    io->allocates = true;
    io->bounce = vd->align > 1 &&
                 (io->off % vd->align != 0 || (io->off + io->len) % vd->align != 0);
    return RT_OK;
}

/* Decides how the request moves and what it must not overlap; it is not yet started. */
static int plan(struct vd_io *io)
{
    rt_vd_t vd = io->vd;
    if (io->kind == VD_IO_FLUSH)
        return RT_OK;
    if (zeroing(io))
        return plan_zero(io);
    uint64_t align = vd->align;
    uint64_t wlo = round_down(io->off, align);
    uint64_t whi = round_up(io->off + io->len, align);
    io->lo = wlo;
    io->hi = whi;
    bool partial = wlo != io->off || whi != io->off + io->len;
    io->bounce = align > 1 && (partial || !iov_aligned(io->iov, io->iovcnt, vd->align));
    if (io->kind != VD_IO_WRITE)
        return RT_OK;
    /* A bounced write rewrites the sectors the guest only partly covers. */
    if (io->bounce && partial)
        io->exclusive = true;
    int rc = write_allocates(vd, wlo, whi, &io->allocates);
    if (rc != RT_OK)
        return rc;
    if (io->allocates) {
        io->exclusive = true;
        io->lo = round_down(wlo, vd->alloc_unit);
        io->hi = round_up(whi, vd->alloc_unit);
    }
    return RT_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Stages. */

static void start_stage(struct vd_io *io, enum io_stage stage)
{
    io->stage = stage;
    io->cursor = io->cursor_end = 0;
    switch (stage) {
    case STAGE_MAIN:
        /* A write or flush admitted before the image was poisoned fails now. */
        if (changes_data(io->kind) && io->vd->poisoned != RT_OK) {
            io->status = io->vd->poisoned;
            return;
        }
        io->cursor = io->off;
        io->cursor_end = io->off + io->len;
        io->zero_write_end = io->off;
        break;
    case STAGE_FLUSH_WAIT:
        io->job_mark = io->vd->jobs_created;
        break;
    case STAGE_FLUSH1:
        io->flush_seq = io->vd->alloc_seq;
        io->cursor_end = io->vd->nfiles; /* one flush op per file */
        break;
    case STAGE_FLUSH2:
        io->cursor_end = io->vd->nfiles;
        break;
    case STAGE_DONE:
        break;
    }
}

static void finish(struct vd_io *io)
{
    if (io->writeback)
        io->vd->writeback_running = false;
    io->stage = STAGE_DONE;
    list_push(&io->queue->done, io);
}

/* Is the metadata the driver holds for the next commit over its budget, with no
 * writeback running?  Then this write makes one before it completes. */
static bool wants_writeback(const struct vd_io *io)
{
    rt_vd_t vd = io->vd;
    return changes_data(io->kind) && !vd->writeback_running && vd->poisoned == RT_OK &&
           vd->driver->needs_writeback != NULL && vd->driver->needs_writeback(vd);
}

/* A failed fsync or commit: see "Durability" above. */
static void poison(struct vd_io *io, int rc)
{
    if (io->vd->poisoned == RT_OK)
        io->vd->poisoned = rc;
    if (io->status == RT_OK)
        io->status = rc;
}

/* Is a job begun before this flush still unfinished? */
static bool flush_must_wait(const struct vd_io *io)
{
    const struct vd_job *oldest = io->vd->jobs_head;
    return oldest != NULL && oldest->number <= io->job_mark;
}

/* Everything numbered up to the flush's mark is durable now: data and metadata. */
static void mark_committed(struct vd_io *io)
{
    if (io->flush_seq > io->vd->committed_seq)
        io->vd->committed_seq = io->flush_seq;
}

/* A forced-unit-access write is durable when its callback runs.  Its plain data ops
 * were (RWF_DSYNC); what points at them is too unless it began an allocation or some
 * change of the image's metadata is not yet committed (an earlier allocation of the
 * unit it wrote into, say): then it runs the flush stages before it completes. */
static bool fua_needs_commit(const struct vd_io *io)
{
    if (io->kind != VD_IO_WRITE || !(io->flags & RT_VD_WRITE_FUA) || io->status != RT_OK)
        return false;
    return io->made_job || io->vd->alloc_seq != io->vd->committed_seq;
}

/* The current stage has no work left and nothing in flight: move on.  Returns false
 * when the request is parked (a flush waiting for jobs). */
static bool next_stage(struct vd_io *io)
{
    rt_vd_t vd = io->vd;
    if (io->status != RT_OK) {
        finish(io);
        return true;
    }
    switch (io->stage) {
    case STAGE_FLUSH_WAIT:
        if (vd->poisoned != RT_OK) {
            io->status = vd->poisoned;
            finish(io);
        } else if (flush_must_wait(io)) {
            io->next_ready = vd->flush_waiters;
            vd->flush_waiters = io;
            return false;
        } else {
            start_stage(io, STAGE_FLUSH1);
        }
        return true;
    case STAGE_FLUSH1:
        if (vd->poisoned != RT_OK) {
            /* Another flush's fsync failed meanwhile: this one's succeeding proves
             * nothing (Linux reports a writeback error once), so nothing is committed. */
            io->status = vd->poisoned;
            finish(io);
            return true;
        }
        if (vd->driver->caps & VD_CAP_ALLOC) {
            int rc = vd->driver->commit(vd, io->flush_seq);
            if (rc < 0) {
                /* A write that found the disk full changed nothing and the commit may
                 * be tried again (its steps are ordered: what reached the file is
                 * consistent); any other failure, or a failed fsync inside it (the
                 * driver's rt__vd_meta_flush poisoned the image already), poisons. */
                if (rc == RT_ERR_DISK_FULL && vd->poisoned == RT_OK)
                    io->status = rc;
                else
                    poison(io, vd->poisoned != RT_OK ? vd->poisoned : rc);
                finish(io);
            } else if (rc > 0) {
                start_stage(io, STAGE_FLUSH2);
            } else {
                mark_committed(io);
                finish(io);
            }
            return true;
        }
        mark_committed(io);
        finish(io);
        return true;
    case STAGE_MAIN:
        if (wants_writeback(io)) {
            /* The flush stages, as a flush would run them: what the commit writes
             * becomes clean and evictable. */
            io->writeback = true;
            vd->writeback_running = true;
            start_stage(io, STAGE_FLUSH_WAIT);
            return true;
        }
        if (fua_needs_commit(io)) {
            start_stage(io, STAGE_FLUSH_WAIT);
            return true;
        }
        finish(io);
        return true;
    case STAGE_FLUSH2:
        if (vd->poisoned != RT_OK && io->status == RT_OK)
            io->status = vd->poisoned;
        if (io->status == RT_OK)
            mark_committed(io);
        finish(io);
        return true;
    case STAGE_DONE:
        finish(io);
        return true;
    }
    return true;
}

/* ---------------------------------------------------------------------------------- */
/* Ops. */

static int op_reserve_iov(struct vd_op *op, unsigned need)
{
    if (need <= op->iovcap)
        return RT_OK;
    rt_iovec_t *grown = realloc(op->iov, need * sizeof(*grown));
    if (grown == NULL)
        return RT_ERR_NO_MEMORY;
    op->iov = grown;
    op->iovcap = need;
    return RT_OK;
}

static void op_reset(struct vd_op *op)
{
    op->iovcnt = 0;
    op->len = 0;
    op->chunk = NULL;
    op->njobs = 0;
    op->load = NULL;
    op->nfill = op->fill_next = 0;
    op->fill_job = NULL;
    op->phase = PHASE_PLAIN;
    op->rmw_tail = false;
}

static void op_release(struct rt_vd_queue *q, struct vd_op *op)
{
    if (op->chunk != NULL)
        chunk_put(q, op->chunk);
    op_reset(op);
    op->io = NULL;
    op->next_free = q->free_ops;
    q->free_ops = op;
    q->nfree_ops++;
}

static int op_prepare(struct vd_op *op)
{
    rt_file_t file = op->file;
    op->dsync = false;
    if (op->phase == PHASE_FILL)
        return rt_aio_req_prepare_readv(op->req, file, op->host_off, &op->fill_iov, 1, op);
    switch (op->kind) {
    case OP_READ:
        return rt_aio_req_prepare_readv(op->req, file, op->host_off, op->iov, op->iovcnt, op);
    case OP_WRITE: {
        int rc = rt_aio_req_prepare_writev(op->req, file, op->host_off, op->iov, op->iovcnt, op);
        /* A forced-unit-access write into data the map had: durable by itself.  The
         * writes of new units are made durable by the flush stages that follow. */
        if (rc == RT_OK && op->io != NULL && (op->io->flags & RT_VD_WRITE_FUA) &&
            op->io->kind == VD_IO_WRITE && op->njobs == 0) {
            rc = rt_aio_req_set_flags(op->req, RT_AIO_REQ_F_DSYNC);
            op->dsync = rc == RT_OK;
        }
        return rc;
    }
    default:
        return rt_aio_req_prepare_flush(op->req, file, op);
    }
}

/* Appends @a len bytes of @a base to the op's iovec. */
static void op_add(struct vd_op *op, void *base, uint64_t len)
{
    op->iov[op->iovcnt].base = base;
    op->iov[op->iovcnt].len = (size_t)len;
    op->iovcnt++;
    op->len += len;
}

/* Appends zeros from the shared zero chunk; returns the bytes added (the iovec may
 * fill up first). */
static uint64_t op_add_zeros(struct rt_vd_queue *q, struct vd_op *op, uint64_t len)
{
    uint64_t added = 0;
    while (added < len && op->iovcnt < op->iovcap) {
        uint64_t piece = min_u64(len - added, CHUNK);
        op_add(op, q->zeros, piece);
        added += piece;
    }
    return added;
}

/* Appends [voff, voff + len) of the guest's buffers; returns the bytes added.  A piece
 * that continues the op's last one in memory extends it (the units of one guest buffer
 * coalesced into one op stay one entry). */
static uint64_t op_add_guest(struct vd_io *io, struct vd_op *op, uint64_t voff, uint64_t len)
{
    if (zeroing(io))
        return op_add_zeros(io->queue, op, len); /* its "guest bytes" are zeros */
    uint64_t taken = 0;
    if (op->iovcnt > 0) {
        rt_iovec_t *last = &op->iov[op->iovcnt - 1];
        rt_iovec_t next;
        if (iov_slice(io->iov, io->iovcnt, voff - io->off, len, &next, 1, &taken) == 1 &&
            (uint8_t *)last->base + last->len == (uint8_t *)next.base) {
            last->len += next.len;
            op->len += taken;
            if (taken == len)
                return taken;
            voff += taken;
            len -= taken;
        } else {
            taken = 0;
        }
    }
    uint64_t more = 0;
    unsigned n = iov_slice(io->iov, io->iovcnt, voff - io->off, len, op->iov + op->iovcnt,
                           op->iovcap - op->iovcnt, &more);
    op->iovcnt += n;
    op->len += more;
    return taken + more;
}

/* Copies the guest's bytes [voff, voff + len) into @a dst (zeros for a zero request). */
static void guest_to_chunk(const struct vd_io *io, uint64_t voff, uint8_t *dst, uint64_t len)
{
    if (zeroing(io))
        memset(dst, 0, (size_t)len);
    else
        iov_copy(io->iov, io->iovcnt, voff - io->off, dst, len, false);
}

/* The op's iovec can take @a entries more (grown on demand, kept across uses). */
static int op_room(struct vd_op *op, struct vd_io *io)
{
    unsigned want = io->iovcnt + MAX_OP_BYTES / CHUNK + 8;
    return op_reserve_iov(op, want < MAX_OP_IOV ? want : MAX_OP_IOV);
}

/* Guest bytes [voff, voff + len) of a compressed unit, inflated into @a buf
 * (synchronous: the read of the stored bytes and the inflate), or zeros. */
static int read_special(rt_vd_t vd, const struct vd_map *map, uint64_t voff, uint8_t *buf,
                        uint64_t len)
{
    if (map->kind == VD_MAP_COMPRESSED)
        return vd->driver->read_compressed(vd, map, voff % vd->alloc_unit, buf, (size_t)len);
    memset(buf, 0, (size_t)len);
    return RT_OK;
}

static int child_read(struct vd_io *parent, struct vd_op *op, uint64_t off, const rt_iovec_t *iov,
                      unsigned iovcnt);

/* A read step that needs no kernel op of this image: [pos, pos + len) straight into
 * the guest's buffers.  @a scratch lends its iovec array. */
static int read_inline(struct vd_io *io, const struct vd_map *map, uint64_t pos, uint64_t len,
                       struct vd_op *scratch)
{
    rt_vd_t vd = io->vd;
    uint64_t skip = pos - io->off;
    if (map->kind == VD_MAP_ZERO || map->kind == VD_MAP_UNALLOCATED) {
        iov_copy(io->iov, io->iovcnt, skip, NULL, len, true);
        if (map->kind == VD_MAP_ZERO || vd->backing == NULL || pos >= vd->backing->size)
            return RT_OK;
        /* The backing image's part: reads of it on this queue, which the request
         * waits for as for its ops. */
        uint64_t from_backing = min_u64(len, vd->backing->size - pos), taken = 0;
        int rc = op_room(scratch, io);
        if (rc != RT_OK)
            return rc;
        for (uint64_t done = 0; rc == RT_OK && done < from_backing; done += taken) {
            unsigned n = iov_slice(io->iov, io->iovcnt, skip + done, from_backing - done,
                                   scratch->iov, scratch->iovcap, &taken);
            rc = child_read(io, NULL, pos + done, scratch->iov, n);
        }
        return rc;
    }
    /* Compressed: the driver inflates the unit once and copies out piece by piece. */
    for (unsigned i = 0, done = 0; i < io->iovcnt && done < len; i++) {
        if (skip >= io->iov[i].len) {
            skip -= io->iov[i].len;
            continue;
        }
        size_t take = (size_t)min_u64(io->iov[i].len - skip, len - done);
        int rc = read_special(vd, map, pos + done, (uint8_t *)io->iov[i].base + skip, take);
        if (rc != RT_OK)
            return rc;
        done += (unsigned)take;
        skip = 0;
    }
    return RT_OK;
}

/* A bounced data op over the aligned window at @a pos: [win_lo, win_lo + win_len) of
 * the guest disk, at most a chunk, inside the data run @a map (asked at win_lo). */
static int bounced_op(struct vd_io *io, struct vd_op *op, const struct vd_map *map, uint64_t pos)
{
    rt_vd_t vd = io->vd;
    uint64_t align = vd->align;
    uint64_t end = io->off + io->len;
    uint64_t wlo = round_down(pos, align);
    /* Runs are whole sectors (open checks every data offset against the granule). */
    uint64_t run = round_down(min_u64(map->length, CHUNK), align);
    if (run == 0)
        return RT_ERR_VD_CORRUPT;
    uint64_t whi = min_u64(round_up(end, align), wlo + run);
    if (op_reserve_iov(op, 1) != RT_OK || (op->chunk = chunk_get(io->queue)) == NULL)
        return RT_ERR_NO_MEMORY;
    op->win_lo = wlo;
    op->win_len = whi - wlo;
    op->host_base = map->host_off;
    op->guest_lo = max_u64(wlo, io->off);
    op->guest_hi = min_u64(whi, end);
    op->host_off = map->host_off;
    op->iovcnt = 0;
    op->len = 0;
    if (io->kind == VD_IO_READ) {
        op->kind = OP_READ;
        op->phase = PHASE_COPY_OUT;
        op_add(op, op->chunk, op->win_len);
    } else {
        bool head = wlo < io->off, tail = whi > end;
        op->kind = OP_READ;
        if (head) {
            op->phase = PHASE_RMW_HEAD;
            op->rmw_tail = tail && whi - wlo > align;
            op_add(op, op->chunk, align);
        } else if (tail) {
            op->phase = PHASE_RMW_TAIL;
            op->host_off = map->host_off + (whi - align - wlo);
            op_add(op, op->chunk + (whi - align - wlo), align);
        } else {
            /* Nothing to read first: copy and write. */
            guest_to_chunk(io, op->guest_lo, op->chunk + (op->guest_lo - wlo),
                           op->guest_hi - op->guest_lo);
            op->kind = OP_WRITE;
            op_add(op, op->chunk, op->win_len);
        }
    }
    io->cursor = op->guest_hi;
    return 1;
}

/* ---------------------------------------------------------------------------------- */
/* Allocation jobs. */

/* The op's chunk gets the job's old contents at guest offset @a voff in @a buf before
 * it is written (op_fill_next). */
static void add_fill(struct vd_op *op, struct vd_job *job, uint64_t voff, uint8_t *buf,
                     uint64_t len)
{
    op->fill_job = job;
    op->fill[op->nfill++] = (struct op_fill){buf, voff, len};
}

/* Are the old contents from @a voff to the unit's end zeros, whatever is read? */
static bool old_is_zero(const struct vd_job *job, uint64_t voff)
{
    rt_vd_t vd = job->io->vd;
    if (voff >= vd->size || job->old.kind == VD_MAP_ZERO)
        return true;
    return job->old.kind == VD_MAP_UNALLOCATED &&
           (vd->backing == NULL || voff >= vd->backing->size);
}

/* Appends to @a op the next piece of the job's unit: zeros, old contents, the guest's
 * bytes, as many as the op takes (at most one chunk of them copied).  The op is empty,
 * or ends where the unit's space begins. */
static int job_fill(struct vd_io *io, struct vd_job *job, struct vd_op *op)
{
    rt_vd_t vd = io->vd;
    uint64_t unit_lo = job->alloc.virt_off, unit_hi = unit_lo + job->alloc.size;
    /* With bouncing, the guest's zone is whole sectors: the partial ones get the old
     * contents around the guest's bytes, in the chunk. */
    uint64_t zone_lo = io->bounce ? round_down(job->guest_lo, vd->align) : job->guest_lo;
    uint64_t zone_hi =
        io->bounce ? min_u64(round_up(job->guest_hi, vd->align), unit_hi) : job->guest_hi;
    if (op->len == 0) {
        op->kind = OP_WRITE;
        op->file = vd->files[job->alloc.file];
        op->host_off = job->alloc.host_off + (job->emit - unit_lo);
        op->iovcnt = 0;
    }
    bool attached = op->njobs > 0 && op->jobs[op->njobs - 1] == job;
    while (job->emit < unit_hi && op->len < MAX_OP_BYTES && op->iovcnt < op->iovcap) {
        uint64_t v = job->emit, room = MAX_OP_BYTES - op->len, added;
        if (v >= zone_lo && v < zone_hi && !io->bounce) {
            added = op_add_guest(io, op, v, min_u64(zone_hi - v, room));
        } else if (v >= zone_lo && v < zone_hi) {
            if (op->chunk != NULL)
                break;
            if ((op->chunk = chunk_get(io->queue)) == NULL)
                return RT_ERR_NO_MEMORY;
            uint64_t n = min_u64(min_u64(zone_hi - v, room), CHUNK);
            uint64_t glo = max_u64(v, job->guest_lo), ghi = min_u64(v + n, job->guest_hi);
            if (glo > v)
                add_fill(op, job, v, op->chunk, glo - v);
            if (ghi < v + n)
                add_fill(op, job, ghi, op->chunk + (ghi - v), v + n - ghi);
            guest_to_chunk(io, glo, op->chunk + (glo - v), ghi - glo);
            op_add(op, op->chunk, n);
            added = n;
        } else {
            /* Old contents up to the guest's zone, or to the unit's end (zeros past the
             * end of the virtual disk: op_fill_next() fills them). */
            uint64_t stop = v < zone_lo ? zone_lo : unit_hi;
            uint64_t n = min_u64(stop - v, room);
            if (old_is_zero(job, v) && job->alloc.fresh &&
                (op->len == 0 || (attached && stop == unit_hi))) {
                /* Zeros into space that reads as zeros: not written.  Only before the
                 * op's first byte, or after its last (the op stays one run). */
                job->emit = stop;
                if (op->len == 0)
                    op->host_off = job->alloc.host_off + (stop - unit_lo);
                continue;
            }
            if (old_is_zero(job, v)) {
                added = op_add_zeros(io->queue, op, n);
            } else {
                if (op->chunk != NULL)
                    break;
                if ((op->chunk = chunk_get(io->queue)) == NULL)
                    return RT_ERR_NO_MEMORY;
                n = min_u64(n, CHUNK);
                add_fill(op, job, v, op->chunk, n);
                op_add(op, op->chunk, n);
                added = n;
            }
        }
        if (added == 0)
            break; /* the iovec is full */
        if (!attached) {
            op->jobs[op->njobs++] = job;
            job->ops_pending++;
            attached = true;
        }
        job->emit += added;
    }
    if (job->emit == unit_hi) {
        job->emitted = true;
        io->job = NULL;
        io->cursor = max_u64(io->cursor, job->guest_hi);
    }
    return RT_OK;
}

static int job_start(struct vd_io *io, const struct vd_map *map, uint64_t at, uint64_t pos);
static void job_finish(struct rt_vd_queue *q, struct vd_job *job);

/* Fills @a op from the request's current job, and while the op has room and the next
 * unit the request writes is new too and was given the space right after, from that
 * one's job as well: a stream of whole-unit writes becomes one op per run of units.
 * A failure once the op holds bytes sends what it holds; the next step meets it
 * again. */
static int job_step(struct vd_io *io, struct vd_job *job, struct vd_op *op)
{
    rt_vd_t vd = io->vd;
    int rc = op_room(op, io);
    if (rc != RT_OK)
        return rc;
    for (;;) {
        rc = job_fill(io, job, op);
        bool emitted = rc == RT_OK && job->emitted;
        /* Emitted with nothing in any op (its last bytes were zeros into fresh space,
         * the rest is back already): it is over. */
        if (emitted && job->ops_pending == 0)
            job_finish(io->queue, job);
        if (!emitted)
            break;
        if (op->njobs == MAX_OP_JOBS || op->len >= MAX_OP_BYTES || op->iovcnt >= op->iovcap ||
            io->cursor >= step_end(io) || io->status != RT_OK)
            break;
        /* The next unit: coalesce only a new one (a plain data write is the next
         * step's, which maps it again). */
        uint64_t pos = io->cursor;
        uint64_t at = io->bounce ? round_down(pos, vd->align) : pos;
        uint64_t to = io->bounce ? round_up(step_end(io), vd->align) : step_end(io);
        struct vd_map map = {0};
        struct vd_load load;
        if ((rc = vd->driver->map(vd, at, to - at, &map, &load)) != RT_OK) {
            rc = rc > 0 ? RT_OK : rc; /* a load: the next step's */
            break;
        }
        if (map.kind == VD_MAP_DATA && !map.shared)
            break;
        uint64_t next_host = op->host_off + op->len;
        if ((rc = job_start(io, &map, at, pos)) != RT_OK)
            break;
        job = io->job;
        if (vd->files[job->alloc.file] != op->file || job->alloc.host_off != next_host ||
            job->emit != job->alloc.virt_off)
            break; /* elsewhere: its own op, next step */
    }
    if (op->len > 0)
        return STEP_OP;
    return rc != RT_OK ? rc : STEP_INLINE; /* only zeros into fresh space were left */
}

/* The job's last op is back (or it was abandoned with none in flight): the driver
 * learns the outcome, and flushes waiting for the job may go on. */
static void job_finish(struct rt_vd_queue *q, struct vd_job *job)
{
    rt_vd_t vd = job->io->vd;
    uint64_t seq = job->status == RT_OK ? ++vd->alloc_seq : 0;
    vd->driver->alloc_done(vd, &job->alloc, job->status, seq);
    if (job->status != RT_OK && job->io->status == RT_OK)
        job->io->status = job->status;
    bool was_oldest = vd->jobs_head == job;
    if (job->prev != NULL)
        job->prev->next = job->next;
    else
        vd->jobs_head = job->next;
    if (job->next != NULL)
        job->next->prev = job->prev;
    else
        vd->jobs_tail = job->prev;
    job_put(q, job);
    if (was_oldest) {
        /* Flushes parked behind it look again. */
        struct vd_io *w = vd->flush_waiters;
        vd->flush_waiters = NULL;
        while (w != NULL) {
            struct vd_io *next = w->next_ready;
            ready_push(q, w);
            w = next;
        }
    }
}

/* Reserves the unit under @a pos and makes the job that writes it; @a map is what the
 * unit held, as asked at @a at (pos, or the start of its sector). */
static int job_start(struct vd_io *io, const struct vd_map *map, uint64_t at, uint64_t pos)
{
    rt_vd_t vd = io->vd;
    struct vd_job *job = job_get(io->queue);
    if (job == NULL)
        return RT_ERR_NO_MEMORY;
    memset(&job->alloc, 0, sizeof(job->alloc));
    int rc = vd->driver->alloc(vd, pos, &job->alloc);
    if (rc == RT_OK && job->alloc.file >= vd->nfiles)
        rc = RT_ERR_VD_CORRUPT;
    if (rc != RT_OK) {
        job_put(io->queue, job);
        return rc;
    }
    job->io = io;
    job->old = *map;
    if (job->old.kind == VD_MAP_DATA)
        job->old.host_off -= at - job->alloc.virt_off;
    uint64_t unit_hi = job->alloc.virt_off + job->alloc.size;
    job->guest_lo = max_u64(io->off, job->alloc.virt_off);
    job->guest_hi = min_u64(io->off + io->len, unit_hi);
    job->emit = job->alloc.virt_off;
    job->number = ++vd->jobs_created;
    job->prev = vd->jobs_tail;
    if (vd->jobs_tail != NULL)
        vd->jobs_tail->next = job;
    else
        vd->jobs_head = job;
    vd->jobs_tail = job;
    io->job = job;
    io->made_job = true;
    return RT_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Metadata loads. */

/* A load's buffer: a chunk from the pool when it fits, else its own (2 MiB tables). */
static uint8_t *load_buf_get(struct rt_vd_queue *q, size_t len)
{
    return len <= CHUNK ? chunk_get(q) : rt_mem_page_alloc(len);
}

static void load_buf_put(struct rt_vd_queue *q, uint8_t *buf, size_t len)
{
    if (buf != NULL && len <= CHUNK)
        chunk_put(q, buf);
    else if (buf != NULL)
        rt_mem_page_free(buf, len);
}

static void park(struct vd_load_wait *w, struct vd_io *io)
{
    io->parked = true;
    io->next_ready = w->waiters;
    w->waiters = io;
}

/* The request needs @a load: waits for the one in flight, or fills @a op to read it. */
static int load_start(struct vd_io *io, struct vd_op *op, const struct vd_load *load)
{
    rt_vd_t vd = io->vd;
    struct rt_vd_queue *q = io->queue;
    for (struct vd_load_wait *w = vd->loads; w != NULL; w = w->next)
        if (w->load.key == load->key && w->load.file == load->file &&
            w->load.host_off == load->host_off && w->load.len == load->len &&
            w->load.gen == load->gen) {
            park(w, io);
            return STEP_PARKED;
        }
    if (load->file >= vd->nfiles || load->len == 0)
        return RT_ERR_VD_CORRUPT; /* a driver asking for what it cannot have */
    struct vd_load_wait *w = q->free_loads;
    if (w != NULL)
        q->free_loads = w->next;
    else if ((w = malloc(sizeof(*w))) == NULL)
        return RT_ERR_NO_MEMORY;
    uint64_t lo = round_down(load->host_off, vd->align);
    uint64_t hi = round_up(load->host_off + load->len, vd->align);
    memset(w, 0, sizeof(*w));
    w->vd = vd;
    w->load = *load;
    w->skip = load->host_off - lo;
    w->buf_len = (size_t)(hi - lo);
    w->buf = load_buf_get(q, w->buf_len);
    if (w->buf == NULL || op_reserve_iov(op, 1) != RT_OK) {
        load_buf_put(q, w->buf, w->buf_len);
        w->next = q->free_loads;
        q->free_loads = w;
        return RT_ERR_NO_MEMORY;
    }
    w->next = vd->loads;
    vd->loads = w;
    park(w, io);
    op->io = NULL;
    op->load = w;
    op->kind = OP_READ;
    op->phase = PHASE_LOAD;
    op->file = vd->files[load->file];
    op->host_off = lo;
    op->iovcnt = 0;
    op->len = 0;
    op_add(op, w->buf, w->buf_len);
    return STEP_LOAD;
}

/* The load's read is back with @a rc: the driver takes the bytes, and every request
 * waiting steps again (or fails with it). */
static void load_finished(struct rt_vd_queue *q, struct vd_op *op, int rc)
{
    struct vd_load_wait *w = op->load;
    rt_vd_t vd = w->vd;
    int status = vd->driver->load_done(vd, &w->load, rc == RT_OK ? w->buf + w->skip : NULL, rc);
    for (struct vd_load_wait **link = &vd->loads; *link != NULL; link = &(*link)->next)
        if (*link == w) {
            *link = w->next;
            break;
        }
    struct vd_io *io = w->waiters;
    while (io != NULL) {
        struct vd_io *next = io->next_ready;
        io->parked = false;
        io->just_loaded = true;
        if (status != RT_OK && io->status == RT_OK)
            io->status = status;
        if (io->pending == 0)
            ready_push(q, io);
        io = next;
    }
    load_buf_put(q, w->buf, w->buf_len);
    w->next = q->free_loads;
    q->free_loads = w;
    op->load = NULL;
    op_release(q, op);
}

/* ---------------------------------------------------------------------------------- */
/* Steps. */

/* Plans one step of @a io at its cursor.  Either does it inline (0), or fills @a op
 * to be submitted (1), or fails the io (< 0). */
static int zero_step(struct vd_io *io, struct vd_op *op);

static int step(struct vd_io *io, struct vd_op *op)
{
    rt_vd_t vd = io->vd;
    if (io->stage == STAGE_FLUSH1 || io->stage == STAGE_FLUSH2) {
        op->kind = OP_FLUSH;
        op->file = vd->files[io->cursor++];
        op->len = 0;
        return 1;
    }
    if (io->job != NULL)
        return job_step(io, io->job, op);
    if (zeroing(io) && io->cursor >= io->zero_write_end)
        return zero_step(io, op);
    uint64_t pos = io->cursor, end = step_end(io);
    /* A bounced data op works on whole sectors: map from the one pos is in. */
    uint64_t at = io->bounce ? round_down(pos, vd->align) : pos;
    uint64_t to = io->bounce ? round_up(end, vd->align) : end;
    struct vd_map map = {0};
    struct vd_load load;
    int rc = vd->driver->map(vd, at, to - at, &map, io->just_loaded ? NULL : &load);
    io->just_loaded = false;
    if (rc == VD_MAP_NEEDS_LOAD)
        return load_start(io, op, &load);
    if (rc != RT_OK)
        return rc;
    bool writing = changes_data(io->kind);
    if (map.kind == VD_MAP_DATA && !(writing && map.shared)) {
        if (map.file >= vd->nfiles)
            return RT_ERR_VD_CORRUPT; /* a driver names a file it never added */
        op->file = vd->files[map.file];
        if (io->bounce)
            return bounced_op(io, op, &map, pos);
        if ((rc = op_room(op, io)) != RT_OK)
            return rc;
        op->kind = writing ? OP_WRITE : OP_READ;
        op->host_off = map.host_off;
        op->iovcnt = 0;
        op->len = 0;
        io->cursor = pos + op_add_guest(io, op, pos, min_u64(min_u64(map.length, MAX_OP_BYTES),
                                                             end - pos));
        op->guest_lo = pos;
        op->guest_hi = io->cursor;
        return 1;
    }
    if (!writing) {
        /* The answer counts from at (the start of pos's sector when bouncing). */
        if (map.length <= pos - at)
            return RT_ERR_VD_CORRUPT;
        uint64_t len = min_u64(min_u64(map.length - (pos - at), end - pos), MAX_OP_BYTES);
        if ((rc = read_inline(io, &map, pos, len, op)) != RT_OK)
            return rc;
        io->cursor = pos + len;
        return 0;
    }
    if ((rc = job_start(io, &map, at, pos)) != RT_OK)
        return rc;
    return job_step(io, io->job, op);
}

/* Does what @a map describes at @a pos read as zeros, whatever is under it? */
static bool reads_zero(rt_vd_t vd, const struct vd_map *map, uint64_t pos)
{
    if (map->kind == VD_MAP_ZERO)
        return true;
    return map->kind == VD_MAP_UNALLOCATED && (vd->backing == NULL || pos >= vd->backing->size);
}

/* The next stretch of a zero or discard request: the driver records what it can in its
 * metadata; the engine writes zeros over the rest (a discard leaves it), except where
 * the image already reads as zeros.  The written stretch then runs as a write would,
 * with zeros for the guest's bytes, up to zero_write_end. */
static int zero_step(struct vd_io *io, struct vd_op *op)
{
    rt_vd_t vd = io->vd;
    uint64_t pos = io->cursor, left = io->cursor_end - pos;
    struct vd_zero z = {left, false};
    uint32_t how = io->flags | (io->kind == VD_IO_DISCARD ? VD_ZERO_DISCARD : 0);
    int rc;
    if (vd->driver->zero != NULL &&
        (rc = vd->driver->zero(vd, pos, left, how, ++vd->alloc_seq, &z)) != RT_OK)
        return rc;
    if (z.length == 0 || z.length > left)
        return RT_ERR_VD_CORRUPT; /* a driver that answers for nothing, or too much */
    if (z.done || io->kind == VD_IO_DISCARD) {
        io->cursor = pos + z.length;
        return STEP_INLINE;
    }
    struct vd_map map = {0};
    if ((rc = vd->driver->map(vd, pos, z.length, &map, NULL)) != RT_OK)
        return rc < 0 ? rc : RT_ERR_VD_CORRUPT;
    if (map.length == 0)
        return RT_ERR_VD_CORRUPT;
    uint64_t n = min_u64(map.length, z.length);
    if (reads_zero(vd, &map, pos)) {
        io->cursor = pos + n;
        return STEP_INLINE;
    }
    io->zero_write_end = pos + z.length;
    return step(io, op);
}

/* ---------------------------------------------------------------------------------- */
/* Completion. */

/* An op is over with @a rc: its request and its job learn it; the op goes back. */
static void op_finished(struct rt_vd_queue *q, struct vd_op *op, int rc)
{
    struct vd_io *io = op->io;
    struct vd_job *jobs[MAX_OP_JOBS];
    unsigned njobs = op->njobs;
    if (rc != RT_OK && (op->kind == OP_FLUSH || op->dsync))
        poison(io, rc);
    else if (rc != RT_OK && io->status == RT_OK)
        io->status = rc;
    for (unsigned i = 0; i < njobs; i++) {
        jobs[i] = op->jobs[i];
        if (rc != RT_OK && jobs[i]->status == RT_OK)
            jobs[i]->status = rc;
        jobs[i]->ops_pending--;
    }
    if (njobs == 0 && rc == RT_OK && op->kind == OP_WRITE && io->vd->driver->write_done != NULL)
        io->vd->driver->write_done(io->vd, op->guest_lo, op->guest_hi - op->guest_lo);
    io->pending--;
    op_release(q, op);
    for (unsigned i = 0; i < njobs; i++)
        if (jobs[i]->emitted && jobs[i]->ops_pending == 0)
            job_finish(q, jobs[i]);
    if (io->pending == 0 && !io->parked)
        ready_push(q, io);
}

/* An op is over: a load's, or a request's. */
static void op_done(struct rt_vd_queue *q, struct vd_op *op, int rc)
{
    if (op->phase == PHASE_LOAD)
        load_finished(q, op, rc);
    else
        op_finished(q, op, rc);
}

/* Resubmits @a op as it now stands; false when that failed. */
static bool resubmit(struct rt_vd_queue *q, struct vd_op *op)
{
    if (op_prepare(op) != RT_OK || rt_aio_ctx_submit(q->ctx, &op->req, 1) != RT_OK)
        return false;
    q->in_flight++;
    return true;
}

/* A bounced write's read phase is done: read the tail next, or copy the guest's bytes
 * into the chunk and write the window. */
static bool rmw_next(struct rt_vd_queue *q, struct vd_op *op)
{
    struct vd_io *io = op->io;
    op->iovcnt = 0;
    op->len = 0;
    if (op->phase == PHASE_RMW_HEAD && op->rmw_tail) {
        uint64_t tail = op->win_len - io->vd->align;
        op->phase = PHASE_RMW_TAIL;
        op->host_off = op->host_base + tail;
        op_add(op, op->chunk + tail, io->vd->align);
        return resubmit(q, op);
    }
    guest_to_chunk(io, op->guest_lo, op->chunk + (op->guest_lo - op->win_lo),
                   op->guest_hi - op->guest_lo);
    op->kind = OP_WRITE;
    op->phase = PHASE_PLAIN;
    op->host_off = op->host_base;
    op_add(op, op->chunk, op->win_len);
    return resubmit(q, op);
}

/* Puts the old contents of the write op's next fill region into its chunk: read from
 * this image's file (an op), from the backing image (a read on the queue), inflated or
 * zeros; when every region is filled, sends the write. */
static void op_fill_next(struct rt_vd_queue *q, struct vd_op *op)
{
    struct vd_io *io = op->io;
    rt_vd_t vd = io->vd;
    struct vd_job *job = op->fill_job;
    int rc = io->status;
    while (rc == RT_OK && op->fill_next < op->nfill) {
        struct op_fill *f = &op->fill[op->fill_next++];
        /* Zeros past the end of the virtual disk (the last unit may stick out). */
        uint64_t inside = f->voff < vd->size ? min_u64(f->len, vd->size - f->voff) : 0;
        memset(f->buf + inside, 0, (size_t)(f->len - inside));
        struct vd_map at = job->old;
        if (at.kind == VD_MAP_ZERO)
            memset(f->buf, 0, (size_t)inside); /* the chunk holds anything */
        if (inside == 0 || at.kind == VD_MAP_ZERO)
            continue;
        if (at.kind == VD_MAP_DATA) {
            if (at.file >= vd->nfiles) {
                rc = RT_ERR_VD_CORRUPT;
                break;
            }
            uint64_t host = at.host_off + (f->voff - job->alloc.virt_off);
            if (vd->align > 1 && (host % vd->align != 0 || inside % vd->align != 0 ||
                                  (uintptr_t)f->buf % vd->align != 0)) {
                /* Uncached, and the region is not whole sectors (the guest's partial
                 * sectors are in the chunk already): read it through an aligned bounce
                 * buffer, synchronously. */
                rc = rt__vd_file_read(vd, at.file, host, f->buf, (size_t)inside);
                continue;
            }
            op->phase = PHASE_FILL;
            op->file = vd->files[at.file];
            op->host_off = host;
            op->fill_iov = (rt_iovec_t){f->buf, (size_t)inside};
            if (resubmit(q, op))
                return;
            rc = RT_ERR_IO;
            break;
        }
        if (at.kind == VD_MAP_UNALLOCATED) {
            uint64_t from_backing = 0;
            if (vd->backing != NULL && f->voff < vd->backing->size)
                from_backing = min_u64(inside, vd->backing->size - f->voff);
            memset(f->buf + from_backing, 0, (size_t)(inside - from_backing));
            if (from_backing == 0)
                continue;
            rt_iovec_t piece = {f->buf, (size_t)from_backing};
            if ((rc = child_read(io, op, f->voff, &piece, 1)) == RT_OK)
                return; /* its completion continues here */
            break;
        }
        rc = read_special(vd, &at, f->voff, f->buf, inside);
    }
    if (rc != RT_OK) {
        op_done(q, op, rc);
        return;
    }
    op->phase = PHASE_PLAIN;
    op->file = op->write_file;
    op->host_off = op->write_host;
    if (!resubmit(q, op))
        op_done(q, op, RT_ERR_IO);
}

/* A read of a backing image the engine made is over: the request or write op that
 * needed it goes on. */
static void child_finished(struct rt_vd_queue *q, struct vd_io *parent, struct vd_op *op,
                           int status)
{
    if (op != NULL) {
        if (status != RT_OK)
            op_done(q, op, status);
        else
            op_fill_next(q, op);
        return;
    }
    if (status != RT_OK && parent->status == RT_OK)
        parent->status = status;
    parent->pending--;
    if (parent->pending == 0 && !parent->parked)
        ready_push(q, parent);
}

static void op_complete(struct rt_vd_queue *q, struct vd_op *op)
{
    struct vd_io *io = op->io;
    size_t done = 0;
    int rc = rt_aio_req_get_rc(op->req, &done);
    q->in_flight--;
    if (op->phase == PHASE_FILL) {
        /* The old contents end early (a file shrunk under us): zeros, as past EOF. */
        if (rc == RT_OK && done < op->fill_iov.len)
            memset((uint8_t *)op->fill_iov.base + done, 0, op->fill_iov.len - done);
        if (rc == RT_OK)
            op_fill_next(q, op);
        else
            op_done(q, op, rc);
        return;
    }
    if (rc == RT_OK && op->kind != OP_FLUSH && done < op->len) {
        if (op->kind == OP_READ) {
            /* The file ends early (a raw image shrunk under us): zeros, as past EOF. */
            iov_copy(op->iov, op->iovcnt, done, NULL, op->len - done, true);
        } else if (done == 0) {
            rc = RT_ERR_DISK_FULL;
        } else {
            /* A short write: send the rest. */
            uint64_t taken;
            op->iovcnt = iov_slice(op->iov, op->iovcnt, done, op->len - done, op->iov,
                                   op->iovcnt, &taken);
            op->host_off += done;
            op->len -= done;
            if (resubmit(q, op))
                return;
            rc = RT_ERR_IO;
        }
    }
    if (rc == RT_OK && (op->phase == PHASE_RMW_HEAD || op->phase == PHASE_RMW_TAIL)) {
        if (rmw_next(q, op))
            return;
        rc = RT_ERR_IO;
    }
    if (rc == RT_OK && op->phase == PHASE_COPY_OUT)
        iov_copy(io->iov, io->iovcnt, op->guest_lo - io->off,
                 op->chunk + (op->guest_lo - op->win_lo), op->guest_hi - op->guest_lo, true);
    op_done(q, op, rc);
}

static void submit_batch(struct rt_vd_queue *q)
{
    if (q->batch_len == 0)
        return;
    uint32_t n = q->batch_len;
    q->batch_len = 0;
    int rc = rt_aio_ctx_submit(q->ctx, q->batch, n);
    if (rc == RT_OK) {
        q->in_flight += n;
        return;
    }
    /* Nothing was submitted: every op fails its request. */
    for (uint32_t i = 0; i < n; i++)
        op_done(q, rt_aio_req_get_user(q->batch[i]), rc);
}

/* A request stops stepping after a failure: a job it was still making ops for gets no
 * more, and ends when those in flight are back. */
static void abandon_job(struct rt_vd_queue *q, struct vd_io *io)
{
    struct vd_job *job = io->job;
    if (job == NULL)
        return;
    io->job = NULL;
    job->emitted = true;
    if (job->status == RT_OK)
        job->status = io->status;
    if (job->ops_pending == 0)
        job_finish(q, job);
}

/* Advances every ready request as far as free ops allow, then submits. */
static void pump(struct rt_vd_queue *q)
{
    struct vd_io *io;
    while ((io = ready_pop(q)) != NULL) {
        for (;;) {
            while (io->status == RT_OK && (io->job != NULL || io->cursor < io->cursor_end) &&
                   op_available(q, io)) {
                struct vd_op *op = q->free_ops;
                op_reset(op);
                op->io = io;
                int rc = step(io, op);
                if (rc == STEP_INLINE)
                    continue;
                if (rc == STEP_PARKED)
                    break;
                if (rc < 0) {
                    if (op->chunk != NULL) {
                        chunk_put(q, op->chunk);
                        op->chunk = NULL;
                    }
                    io->status = rc;
                    break;
                }
                q->free_ops = op->next_free;
                q->nfree_ops--;
                if (rc == STEP_OP)
                    io->pending++;
                if (rc == STEP_OP && op->nfill > 0) {
                    /* Old contents first, then the write (sent by op_fill_next). */
                    op->write_file = op->file;
                    op->write_host = op->host_off;
                    op_fill_next(q, op);
                    continue;
                }
                int prc = op_prepare(op);
                if (prc != RT_OK) {
                    op_done(q, op, prc);
                    break;
                }
                q->batch[q->batch_len++] = op->req;
                if (rc == STEP_LOAD)
                    break; /* parked on it */
            }
            if (io->parked)
                break; /* the load's completion brings it back */
            if (io->status != RT_OK)
                abandon_job(q, io);
            if (io->status == RT_OK && (io->job != NULL || io->cursor < io->cursor_end)) {
                ready_push(q, io); /* out of ops: continue later */
                break;
            }
            if (io->pending > 0 || io->on_ready)
                break; /* completions bring it back */
            if (!next_stage(io) || io->stage == STAGE_DONE)
                break;
        }
    }
    submit_batch(q);
}

/* ---------------------------------------------------------------------------------- */
/* Completion delivery. */

static void io_free(struct rt_vd_queue *q, struct vd_io *io)
{
    if (io->iov != io->iov_inline)
        free(io->iov);
    if (q->nfree_ios >= q->depth) {
        free(io);
        return;
    }
    io->next_ready = q->free_ios;
    q->free_ios = io;
    q->nfree_ios++;
}

/* A zeroed request record, from the queue's spares if it has one. */
static struct vd_io *io_get(struct rt_vd_queue *q)
{
    struct vd_io *io = q->free_ios;
    if (io == NULL)
        return calloc(1, sizeof(*io));
    q->free_ios = io->next_ready;
    q->nfree_ios--;
    memset(io, 0, sizeof(*io));
    return io;
}

/* Runs callbacks of finished requests; a finished request may let waiting ones start. */
static uint32_t deliver(struct rt_vd_queue *q)
{
    uint32_t n = 0;
    struct vd_io *io;
    while ((io = list_pop(&q->done)) != NULL) {
        rt_vd_t vd = io->vd;
        struct vd_io *after = io->next_active;
        active_remove(vd, io);
        for (struct vd_io *w = after; w != NULL; w = w->next_active)
            if (!w->running)
                try_start(w);
        vd->outstanding--;
        if (vd->outstanding == 0)
            vd->busy_queue = NULL;
        q->ios--;
        rt_vd_done_t *done = io->done;
        void *user = io->user;
        int status = io->status;
        struct vd_io *parent = io->parent;
        struct vd_op *parent_op = io->parent_op;
        io_free(q, io);
        if (parent != NULL) {
            child_finished(q, parent, parent_op, status);
            continue; /* the engine's own: not a completion of the caller's */
        }
        done(user, status);
        n++;
    }
    return n;
}

/* ---------------------------------------------------------------------------------- */
/* Public queue API. */

/* Frees what a queue holds (its context already destroyed, or never made) and the
 * handle.  Also the undo of a half-made queue: missing pieces are NULL. */
static void queue_free(struct rt_vd_queue *q)
{
    for (uint32_t i = 0; q->ops != NULL && i < q->nops; i++) {
        rt_aio_req_destroy(q->ops[i].req);
        free(q->ops[i].iov);
    }
    while (q->free_chunks != NULL)
        rt_mem_page_free(chunk_get(q), CHUNK);
    while (q->free_jobs != NULL) {
        struct vd_job *job = q->free_jobs;
        q->free_jobs = job->next;
        free(job);
    }
    while (q->free_ios != NULL) {
        struct vd_io *io = q->free_ios;
        q->free_ios = io->next_ready;
        free(io);
    }
    while (q->free_loads != NULL) {
        struct vd_load_wait *w = q->free_loads;
        q->free_loads = w->next;
        free(w);
    }
    if (q->zeros != NULL)
        rt_mem_page_free(q->zeros, CHUNK);
    free(q->ops);
    free(q->batch);
    free(q->reaped);
    memset(q, 0, sizeof(*q));
    q->magic = RT__MAGIC_DEAD;
    rt__handle_free(&queue_pool, q);
}

int rt_vd_queue_create(rt_vd_queue_t *queue, uint32_t depth)
{
    if (queue == NULL)
        return RT_ERR_INVALID_POINTER;
    *queue = RT_VD_QUEUE_NIL;
    if (depth == 0)
        depth = DEFAULT_DEPTH;
    if (depth > MAX_DEPTH)
        return RT_ERR_INVALID_PARAMETER;
    struct rt_vd_queue *q = rt__handle_alloc(&queue_pool);
    if (q == NULL)
        return RT_ERR_NO_MEMORY;
    q->depth = depth;
    q->nops = depth + CHILD_RESERVE;
    int rc = RT_ERR_NO_MEMORY;
    q->ops = calloc(q->nops, sizeof(*q->ops));
    q->batch = calloc(q->nops, sizeof(*q->batch));
    q->reaped = calloc(q->nops, sizeof(*q->reaped));
    q->zeros = rt_mem_page_alloc(CHUNK); /* zero-filled */
    if (q->ops == NULL || q->batch == NULL || q->reaped == NULL || q->zeros == NULL)
        goto fail;
    for (uint32_t i = 0; i < q->nops; i++) {
        if ((rc = rt_aio_req_create(&q->ops[i].req)) != RT_OK)
            goto fail;
        q->ops[i].next_free = q->free_ops;
        q->free_ops = &q->ops[i];
        q->nfree_ops++;
    }
    if ((rc = rt_aio_ctx_create(&q->ctx, q->nops, 0)) != RT_OK)
        goto fail;
    q->magic = RT__MAGIC_VD_QUEUE;
    *queue = q;
    return RT_OK;

fail:
    queue_free(q);
    return rc;
}

int rt_vd_queue_destroy(rt_vd_queue_t q)
{
    if (q == NULL)
        return RT_OK;
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    if (q->ios > 0 || q->running)
        return RT_ERR_AIO_BUSY;
    int rc = rt_aio_ctx_destroy(q->ctx);
    if (rc != RT_OK)
        return rc;
    queue_free(q);
    return RT_OK;
}

/* Makes and admits a request whose arguments are checked; the request is @a parent's
 * (and @a parent_op's) read of a backing image when @a parent is not NULL. */
static int io_begin(struct rt_vd_queue *q, rt_vd_t vd, int kind, uint64_t off,
                    const rt_iovec_t *iov, unsigned iovcnt, uint64_t total, uint32_t flags,
                    rt_vd_done_t *done, void *user, struct vd_io *parent,
                    struct vd_op *parent_op)
{
    int rc;
    if (vd->busy_queue != NULL && vd->busy_queue != q)
        return RT_ERR_BUSY;
    if (kind != VD_IO_READ && !vd->read_only && vd->poisoned != RT_OK)
        return vd->poisoned;
    if (changes_data(kind) && total > 0 && (rc = rt__vd_begin_write(vd)) != RT_OK)
        return rc;
    struct vd_io *io = io_get(q);
    if (io == NULL)
        return RT_ERR_NO_MEMORY;
    io->vd = vd;
    io->queue = q;
    io->kind = kind;
    io->off = off;
    io->len = total;
    io->flags = flags;
    io->made_job = false;
    io->done = done;
    io->user = user;
    io->parent = parent;
    io->parent_op = parent_op;
    io->iov = iovcnt <= INLINE_IOV ? io->iov_inline : malloc(iovcnt * sizeof(*iov));
    if (io->iov == NULL) {
        io->iov = io->iov_inline;
        io_free(q, io);
        return RT_ERR_NO_MEMORY;
    }
    if (iovcnt > 0)
        memcpy(io->iov, iov, iovcnt * sizeof(*iov));
    io->iovcnt = iovcnt;
    /* Nothing to move (a zero-length transfer, a flush of a read-only image): it
     * completes at the next run, in order with the rest, and orders nothing. */
    bool trivial = kind == VD_IO_FLUSH ? vd->read_only : total == 0;
    if (trivial)
        io->kind = VD_IO_FLUSH;
    else if ((rc = plan(io)) != RT_OK) {
        io_free(q, io);
        return rc;
    }
    vd->busy_queue = q;
    vd->outstanding++;
    q->ios++;
    active_append(vd, io);
    if (trivial) {
        io->running = true;
        io->stage = STAGE_DONE;
        list_push(&q->done, io);
    } else {
        try_start(io);
    }
    return RT_OK;
}

static int queue_start(struct rt_vd_queue *q, rt_vd_t vd, int kind, uint64_t off,
                       const rt_iovec_t *iov, unsigned iovcnt, uint32_t flags,
                       rt_vd_done_t *done, void *user)
{
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    uint64_t total = 0;
    int rc = rt__vd_check_request(vd, kind, off, iov, iovcnt, &total);
    if (rc != RT_OK)
        return rc;
    if ((flags & ~(kind == VD_IO_WRITE ? RT_VD_WRITE_FUA : 0u)) != 0)
        return RT_ERR_INVALID_PARAMETER;
    if (done == NULL)
        return RT_ERR_INVALID_POINTER;
    return io_begin(q, vd, kind, off, iov, iovcnt, total, flags, done, user, NULL, NULL);
}

/* Reads [off, off + the iovec's length) of @a parent's backing image into @a iov, as a
 * request on the same queue: for @a parent itself (it waits for it as for an op), or
 * for @a op, a write of @a parent's that needs the bytes before it is sent.  Inside
 * the backing image's size (the caller cuts there). */
static int child_read(struct vd_io *parent, struct vd_op *op, uint64_t off, const rt_iovec_t *iov,
                      unsigned iovcnt)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < iovcnt; i++)
        total += iov[i].len;
    int rc = io_begin(parent->queue, parent->vd->backing, VD_IO_READ, off, iov, iovcnt, total,
                      0, NULL, NULL, parent, op);
    if (rc == RT_OK && op == NULL)
        parent->pending++;
    return rc;
}

int rt_vd_queue_read(rt_vd_queue_t q, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                     unsigned iovcnt, rt_vd_done_t *done, void *user)
{
    return queue_start(q, vd, VD_IO_READ, off, iov, iovcnt, 0, done, user);
}

int rt_vd_queue_write(rt_vd_queue_t q, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                      unsigned iovcnt, rt_vd_done_t *done, void *user)
{
    return queue_start(q, vd, VD_IO_WRITE, off, iov, iovcnt, 0, done, user);
}

int rt_vd_queue_write_flags(rt_vd_queue_t q, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                            unsigned iovcnt, uint32_t flags, rt_vd_done_t *done, void *user)
{
    return queue_start(q, vd, VD_IO_WRITE, off, iov, iovcnt, flags, done, user);
}

static int queue_start_zero(struct rt_vd_queue *q, rt_vd_t vd, int kind, uint64_t off,
                            uint64_t len, uint32_t flags, rt_vd_done_t *done, void *user)
{
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    int rc = rt__vd_check_zero(vd, off, len, flags);
    if (rc != RT_OK)
        return rc;
    if (done == NULL)
        return RT_ERR_INVALID_POINTER;
    return io_begin(q, vd, kind, off, NULL, 0, len, flags, done, user, NULL, NULL);
}

int rt_vd_queue_write_zeroes(rt_vd_queue_t q, rt_vd_t vd, uint64_t off, uint64_t len,
                             uint32_t flags, rt_vd_done_t *done, void *user)
{
    return queue_start_zero(q, vd, VD_IO_ZERO, off, len, flags, done, user);
}

int rt_vd_queue_discard(rt_vd_queue_t q, rt_vd_t vd, uint64_t off, uint64_t len,
                        rt_vd_done_t *done, void *user)
{
    return queue_start_zero(q, vd, VD_IO_DISCARD, off, len, 0, done, user);
}

int rt_vd_queue_flush(rt_vd_queue_t q, rt_vd_t vd, rt_vd_done_t *done, void *user)
{
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    return queue_start(q, vd, VD_IO_FLUSH, 0, NULL, 0, 0, done, user);
}

int rt_vd_queue_run(rt_vd_queue_t q, uint32_t min, uint32_t timeout_ms, uint32_t *completed)
{
    if (completed != NULL)
        *completed = 0;
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    if (q->running)
        return RT_ERR_AIO_BUSY; /* a callback ran the queue it is called from */
    q->running = true;
    uint32_t count = 0;
    uint64_t start = rt_time_milli_ts();
    int rc = RT_OK;
    bool polled = false;
    for (;;) {
        pump(q);
        count += deliver(q);
        if (work_ready(q))
            continue; /* callbacks started more work */
        if (min > 0 && count >= min)
            break;
        if (min == 0 && polled)
            break;
        if (q->ios == 0) {
            rc = min > 0 ? RT_ERR_AIO_NO_REQUEST : RT_OK;
            break;
        }
        uint32_t wait_ms = timeout_ms;
        if (min == 0) {
            wait_ms = 0;
        } else if (timeout_ms != RT_INDEFINITE_WAIT) {
            uint64_t spent_ms = rt_time_milli_ts() - start;
            wait_ms = spent_ms >= timeout_ms ? 0 : timeout_ms - (uint32_t)spent_ms;
        }
        uint32_t got = 0;
        rc = rt_aio_ctx_wait(q->ctx, 1, wait_ms, q->reaped, q->nops, &got);
        for (uint32_t i = 0; i < got; i++)
            op_complete(q, rt_aio_req_get_user(q->reaped[i]));
        if (min == 0) {
            polled = true;
            rc = RT_OK;
            continue;
        }
        if (rc == RT_OK)
            continue;
        pump(q);
        count += deliver(q);
        if (rc == RT_ERR_TIMEOUT && count >= min)
            rc = RT_OK;
        if (rc == RT_ERR_AIO_NO_REQUEST)
            rc = RT_ERR_GENERAL_FAILURE; /* requests waiting on nothing: a bug here */
        break;
    }
    q->running = false;
    if (completed != NULL)
        *completed = count;
    return rc;
}

int rt_vd_queue_wakeup(rt_vd_queue_t q)
{
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    return rt_aio_ctx_wakeup(q->ctx);
}

/* ---------------------------------------------------------------------------------- */
/* The synchronous calls: one request on the image's private queue. */

struct sync_wait {
    bool done;
    int status;
};

static void sync_done(void *user, int status)
{
    struct sync_wait *w = user;
    w->done = true;
    w->status = status;
}

int rt__vd_queue_ensure_idle(rt_vd_t vd)
{
    return vd->outstanding == 0 ? RT_OK : RT_ERR_BUSY;
}

/* The image's private queue for the synchronous calls, made on first use. */
static int sync_queue(rt_vd_t vd)
{
    if (vd->outstanding > 0)
        return RT_ERR_BUSY;
    if (vd->sync_queue == NULL)
        return rt_vd_queue_create(&vd->sync_queue, SYNC_DEPTH);
    return RT_OK;
}

/* Runs the private queue until the request started with status @a rc is done. */
static int sync_run(rt_vd_t vd, int rc, struct sync_wait *w)
{
    while (rc == RT_OK && !w->done)
        rc = rt_vd_queue_run(vd->sync_queue, 1, RT_INDEFINITE_WAIT, NULL);
    return rc != RT_OK ? rc : w->status;
}

int rt__vd_sync_io(rt_vd_t vd, int kind, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt,
                   uint32_t flags)
{
    struct sync_wait w = {false, RT_OK};
    int rc = sync_queue(vd);
    if (rc == RT_OK)
        rc = queue_start(vd->sync_queue, vd, kind, off, iov, iovcnt, flags, sync_done, &w);
    return rc == RT_OK ? sync_run(vd, rc, &w) : rc;
}

int rt__vd_sync_zero(rt_vd_t vd, int kind, uint64_t off, uint64_t len, uint32_t flags)
{
    struct sync_wait w = {false, RT_OK};
    int rc = sync_queue(vd);
    if (rc == RT_OK)
        rc = queue_start_zero(vd->sync_queue, vd, kind, off, len, flags, sync_done, &w);
    return rc == RT_OK ? sync_run(vd, rc, &w) : rc;
}

void rt__vd_queue_release_sync(rt_vd_t vd)
{
    rt_vd_queue_destroy(vd->sync_queue);
    vd->sync_queue = NULL;
}
