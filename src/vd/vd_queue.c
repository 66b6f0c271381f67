/*
 * The request engine: every read, write and flush of every image goes through here,
 * the synchronous calls included (they run on a private queue of the image).
 *
 * A guest request (struct vd_io) moves through stages, and each stage is a byte range
 * walked by a cursor.  At each step the driver maps the range under the cursor and the
 * engine turns the answer into one kernel request (struct vd_op) or does it inline:
 *
 *   read   MAIN: data -> read op; zero / unallocated -> memset
 *   write  HEAD (only when bouncing an unaligned write): read the partial first and last
 *          sectors into the bounce buffer, then copy the guest data over them
 *          MAIN: data -> write op; zero / unallocated -> alloc() a unit, fill a unit
 *          buffer with zeros and the guest bytes, one write op for the whole unit
 *   flush  FLUSH1 (fsync) -> driver commit() -> FLUSH2 (fsync)
 *
 * Ops are a fixed pool (the queue's depth); a request whose next step finds no free op
 * stays on the ready list and continues when one comes back.  So a 1 GiB request does
 * not need 1 GiB of anything, and hundreds of requests share one AIO context fairly.
 *
 * Ordering.  The kernel reorders freely, so two requests must not be in flight together
 * when one could clobber the other beyond the bytes it was asked to write:
 *   - a write that allocates writes its whole unit (zeros around the guest bytes), and
 *   - a read-modify-write rewrites whole sectors around an unaligned write.
 * Such a request is "exclusive" over its widened range [lo, hi).  Every image keeps its
 * requests in arrival order; a request starts only when no earlier request overlapping
 * it is exclusive, and an exclusive one only when no earlier overlapping request at all
 * is left.  Plain aligned reads and writes of allocated data never wait.
 *
 * Durability.  Allocation metadata reaches the file only at a flush: FLUSH1 makes the
 * data durable, then the driver writes the metadata of exactly the allocations whose data
 * was complete before FLUSH1 started (tracked by a sequence number), then FLUSH2.  So no
 * crash, of the process or of the machine, can leave metadata pointing at unwritten data.
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
#define DEFAULT_DEPTH 128u
#define MAX_DEPTH 4096u
#define SYNC_DEPTH 32u
#define INLINE_IOV 4u

enum io_stage { STAGE_HEAD, STAGE_MAIN, STAGE_FLUSH1, STAGE_FLUSH2, STAGE_DONE };
enum op_kind { OP_READ, OP_WRITE, OP_FLUSH };

struct vd_io {
    struct vd_io *next_active, *prev_active; /* the image's arrival-order list */
    struct vd_io *next_ready;                /* the queue's ready or done list */
    bool on_ready, running;
    rt_vd_t vd;
    struct rt_vd_queue *queue;
    int kind;
    uint64_t off, len;
    rt_iovec_t *iov; /* the guest's buffers (copied array) */
    unsigned iovcnt;
    rt_iovec_t iov_inline[INLINE_IOV];
    rt_vd_done_t *done;
    void *user;

    /* Ordering. */
    bool exclusive;
    uint64_t lo, hi;

    /* Where stage data lives: the guest's iov (base = off) or one bounce buffer
     * covering the aligned window (base = window start). */
    const rt_iovec_t *target;
    unsigned target_cnt;
    uint64_t target_base;
    rt_iovec_t bounce_iov;
    uint8_t *bounce;
    size_t bounce_len;

    enum io_stage stage;
    uint64_t cursor, cursor_end;
    uint64_t tail_lo; /* HEAD: the second sector to read, or UINT64_MAX */
    uint32_t pending; /* ops in flight */
    int status;
    uint64_t flush_seq;
};

/* A FIFO of requests, linked through next_ready (a request is on one at a time). */
struct io_list {
    struct vd_io *head, *tail;
};

struct vd_op {
    struct vd_op *next_free;
    rt_aio_req_t req;
    struct vd_io *io;
    int kind;
    uint64_t host_off;
    uint64_t len;
    rt_iovec_t *iov;
    unsigned iovcnt, iovcap;
    /* An allocating write owns its unit buffer and reservation. */
    bool is_alloc;
    struct vd_alloc alloc;
    uint8_t *unit;
};

struct rt_vd_queue {
    uint32_t magic;
    void *next_free;
    rt_aio_ctx_t ctx;
    uint32_t depth;
    struct vd_op *ops;
    struct vd_op *free_ops;
    uint32_t in_flight;
    uint32_t ios;  /* accepted, callback not yet run */
    bool running;  /* inside rt_vd_queue_run(): callbacks may not destroy the queue */
    struct io_list ready; /* running requests that can take another step */
    struct io_list done;  /* finished requests whose callbacks are due */
    rt_aio_req_t *batch;
    uint32_t batch_len;
    rt_aio_req_t *reaped;
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

static uint64_t round_down(uint64_t v, uint64_t unit)
{
    return v - v % unit;
}

static uint64_t round_up(uint64_t v, uint64_t unit)
{
    return round_down(v + unit - 1, unit);
}

/* ---------------------------------------------------------------------------------- */
/* Scatter/gather helpers over an io's target. */

/* Describes [skip, skip + len) of @a iov in @a out (room for @a iovcnt entries). */
static unsigned iov_slice(const rt_iovec_t *iov, unsigned iovcnt, uint64_t skip, uint64_t len,
                          rt_iovec_t *out)
{
    unsigned n = 0;
    for (unsigned i = 0; i < iovcnt && len > 0; i++) {
        if (skip >= iov[i].len) {
            skip -= iov[i].len;
            continue;
        }
        size_t take = (size_t)min_u64(iov[i].len - skip, len);
        out[n].base = (uint8_t *)iov[i].base + skip;
        out[n].len = take;
        n++;
        len -= take;
        skip = 0;
    }
    return n;
}

/* Copies between a flat buffer and [skip, skip + len) of @a iov. */
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

static void target_zero(struct vd_io *io, uint64_t voff, uint64_t len)
{
    iov_copy(io->target, io->target_cnt, voff - io->target_base, NULL, len, true);
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
        list_push(&q->ready, io);
    }
}

static struct vd_io *ready_pop(struct rt_vd_queue *q)
{
    struct vd_io *io = list_pop(&q->ready);
    if (io != NULL)
        io->on_ready = false;
    return io;
}

static void done_push(struct rt_vd_queue *q, struct vd_io *io)
{
    list_push(&q->done, io);
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
/* Admission and ordering. */

static bool conflicts(const struct vd_io *earlier, const struct vd_io *io)
{
    if (earlier->kind == VD_IO_FLUSH || io->kind == VD_IO_FLUSH)
        return false;
    if (!earlier->exclusive && !io->exclusive)
        return false;
    return earlier->lo < io->hi && io->lo < earlier->hi;
}

/* Does the aligned window of a write need units allocated?  Decided on admission from
 * the in-memory map; a request that turns out not to allocate when it runs is only
 * more careful than it needed to be. */
static int write_allocates(rt_vd_t vd, uint64_t lo, uint64_t hi, bool *allocates)
{
    *allocates = false;
    if (vd->driver->alloc == NULL)
        return RT_OK;
    for (uint64_t pos = lo; pos < hi;) {
        struct vd_map map = {0};
        int rc = vd->driver->map(vd, pos, hi - pos, &map);
        if (rc != RT_OK)
            return rc;
        if (map.kind != VD_MAP_DATA || map.shared) {
            *allocates = true;
            return RT_OK;
        }
        pos += map.length;
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
    if (io->kind == VD_IO_FLUSH)
        start_stage(io, STAGE_FLUSH1);
    else
        start_stage(io, io->tail_lo != UINT64_MAX || io->cursor < io->cursor_end ? STAGE_HEAD
                                                                               : STAGE_MAIN);
    ready_push(io->queue, io);
}

/* Sets up targets, bounce buffer and ordering range; the io is not yet started. */
static int plan(struct vd_io *io)
{
    rt_vd_t vd = io->vd;
    io->tail_lo = UINT64_MAX;
    io->cursor = io->cursor_end = 0;
    if (io->kind == VD_IO_FLUSH)
        return RT_OK;
    uint64_t align = vd->align;
    uint64_t wlo = round_down(io->off, align);
    uint64_t whi = round_up(io->off + io->len, align);
    io->lo = wlo;
    io->hi = whi;
    io->target = io->iov;
    io->target_cnt = io->iovcnt;
    io->target_base = io->off;
    bool partial = wlo != io->off || whi != io->off + io->len;
    if (align > 1 && (partial || !iov_aligned(io->iov, io->iovcnt, vd->align))) {
        io->bounce_len = (size_t)(whi - wlo);
        io->bounce = rt_mem_page_alloc(io->bounce_len);
        if (io->bounce == NULL)
            return RT_ERR_NO_MEMORY;
        io->bounce_iov.base = io->bounce;
        io->bounce_iov.len = io->bounce_len;
        io->target = &io->bounce_iov;
        io->target_cnt = 1;
        io->target_base = wlo;
    }
    if (io->kind != VD_IO_WRITE)
        return RT_OK;
    if (partial && io->bounce != NULL) {
        /* The sectors the guest only partly covers are read first. */
        io->exclusive = true;
        if (wlo != io->off) {
            io->cursor = wlo;
            io->cursor_end = wlo + align;
        }
        if (whi != io->off + io->len && !(io->cursor_end == whi && io->cursor == whi - align))
            io->tail_lo = whi - align;
        if (io->cursor == io->cursor_end && io->tail_lo != UINT64_MAX) {
            io->cursor = io->tail_lo;
            io->cursor_end = io->tail_lo + align;
            io->tail_lo = UINT64_MAX;
        }
    }
    bool allocates = false;
    int rc = write_allocates(vd, wlo, whi, &allocates);
    if (rc != RT_OK)
        return rc;
    if (allocates) {
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
    switch (stage) {
    case STAGE_HEAD:
        break; /* cursor set by plan() */
    case STAGE_MAIN:
        if (io->kind == VD_IO_WRITE && io->bounce != NULL)
            iov_copy(io->iov, io->iovcnt, 0, io->bounce + (io->off - io->target_base), io->len,
                     false);
        io->cursor = io->target_base;
        io->cursor_end = io->bounce != NULL ? io->target_base + io->bounce_len : io->off + io->len;
        break;
    case STAGE_FLUSH1:
        io->flush_seq = io->vd->alloc_seq;
        io->cursor = 0;
        io->cursor_end = 1;
        break;
    case STAGE_FLUSH2:
        io->cursor = 0;
        io->cursor_end = 1;
        break;
    case STAGE_DONE:
        io->cursor = io->cursor_end = 0;
        break;
    }
}

static void finish(struct vd_io *io)
{
    if (io->status == RT_OK && io->kind == VD_IO_READ && io->bounce != NULL)
        iov_copy(io->iov, io->iovcnt, 0, io->bounce + (io->off - io->target_base), io->len,
                 true);
    io->stage = STAGE_DONE;
    done_push(io->queue, io);
}

/* The current stage has no work left and nothing in flight: move on. */
static void next_stage(struct vd_io *io)
{
    if (io->status != RT_OK) {
        finish(io);
        return;
    }
    switch (io->stage) {
    case STAGE_HEAD:
        if (io->tail_lo != UINT64_MAX) {
            io->cursor = io->tail_lo;
            io->cursor_end = io->tail_lo + io->vd->align;
            io->tail_lo = UINT64_MAX;
            return;
        }
        start_stage(io, STAGE_MAIN);
        return;
    case STAGE_FLUSH1:
        if (io->vd->driver->commit != NULL) {
            int rc = io->vd->driver->commit(io->vd, io->flush_seq);
            if (rc < 0) {
                io->status = rc;
                finish(io);
            } else if (rc > 0) {
                start_stage(io, STAGE_FLUSH2);
            } else {
                finish(io);
            }
            return;
        }
        finish(io);
        return;
    case STAGE_MAIN:
    case STAGE_FLUSH2:
    case STAGE_DONE:
        finish(io);
        return;
    }
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

static void op_release(struct rt_vd_queue *q, struct vd_op *op)
{
    if (op->unit != NULL) {
        rt_mem_page_free(op->unit, op->alloc.size);
        op->unit = NULL;
    }
    op->is_alloc = false;
    op->io = NULL;
    op->next_free = q->free_ops;
    q->free_ops = op;
}

static int op_prepare(struct vd_op *op, rt_file_t file)
{
    switch (op->kind) {
    case OP_READ:
        return rt_aio_req_prepare_readv(op->req, file, op->host_off, op->iov, op->iovcnt, op);
    case OP_WRITE:
        return rt_aio_req_prepare_writev(op->req, file, op->host_off, op->iov, op->iovcnt, op);
    default:
        return rt_aio_req_prepare_flush(op->req, file, op);
    }
}

/* Reads guest bytes [voff, voff + len) that are not plain data in this image into
 * @a buf: zeros, the backing file's bytes (zeros past its end), or decompressed. */
static int read_special(rt_vd_t vd, const struct vd_map *map, uint64_t voff, uint8_t *buf,
                        uint64_t len)
{
    if (map->kind == VD_MAP_COMPRESSED)
        return vd->driver->read_compressed(vd, voff, buf, (size_t)len);
    if (map->kind == VD_MAP_DATA)
        return rt__vd_meta_read(vd, map->host_off, buf, (size_t)len);
    memset(buf, 0, (size_t)len);
    if (map->kind == VD_MAP_UNALLOCATED && vd->backing != NULL && voff < vd->backing->size) {
        uint64_t from_backing = min_u64(len, vd->backing->size - voff);
        return rt_vd_read(vd->backing, voff, buf, (size_t)from_backing);
    }
    return RT_OK;
}

/* A read step that needs no kernel op of this image. */
static int read_inline(struct vd_io *io, const struct vd_map *map, uint64_t pos, uint64_t len)
{
    rt_vd_t vd = io->vd;
    if (map->kind == VD_MAP_ZERO || (map->kind == VD_MAP_UNALLOCATED && vd->backing == NULL)) {
        target_zero(io, pos, len);
        return RT_OK;
    }
    uint8_t *flat = malloc((size_t)len);
    if (flat == NULL)
        return RT_ERR_NO_MEMORY;
    int rc = read_special(vd, map, pos, flat, len);
    if (rc == RT_OK)
        iov_copy(io->target, io->target_cnt, pos - io->target_base, flat, len, true);
    free(flat);
    return rc;
}

/* Fills a new unit's buffer with the unit's current guest contents, as @a map (asked at
 * @a pos inside the unit) describes them; the unit is uniform, so one answer holds for
 * all of it.  Past the virtual size the unit stays zero. */
static int fill_unit(rt_vd_t vd, const struct vd_map *map, uint64_t pos, uint64_t unit_off,
                     uint8_t *unit, uint64_t write_end)
{
    uint64_t span = min_u64(vd->alloc_unit, vd->size - unit_off);
    memset(unit + span, 0, vd->alloc_unit - span);
    if (pos <= unit_off && write_end >= unit_off + span) {
        /* The write covers the whole unit: what was there does not matter (and need
         * not even be readable). */
        memset(unit, 0, span);
        return RT_OK;
    }
    struct vd_map whole = *map;
    if (whole.kind == VD_MAP_DATA)
        whole.host_off -= pos - unit_off;
    return read_special(vd, &whole, unit_off, unit, span);
}

/* Plans one step of @a io at its cursor.  Either does it inline, or fills @a op and
 * returns 1 (the op is to be submitted), or fails the io. */
static int step(struct vd_io *io, struct vd_op *op)
{
    rt_vd_t vd = io->vd;
    if (io->stage == STAGE_FLUSH1 || io->stage == STAGE_FLUSH2) {
        io->cursor = io->cursor_end;
        op->kind = OP_FLUSH;
        op->len = 0;
        return 1;
    }
    uint64_t pos = io->cursor;
    struct vd_map map = {0};
    int rc = vd->driver->map(vd, pos, io->cursor_end - pos, &map);
    if (rc != RT_OK)
        return rc;
    uint64_t len = min_u64(min_u64(map.length, io->cursor_end - pos), MAX_OP_BYTES);
    bool reading = io->kind == VD_IO_READ || io->stage == STAGE_HEAD;
    if (map.kind == VD_MAP_DATA && (reading || !map.shared)) {
        unsigned need = io->target_cnt;
        if ((rc = op_reserve_iov(op, need)) != RT_OK)
            return rc;
        op->iovcnt = iov_slice(io->target, io->target_cnt, pos - io->target_base, len, op->iov);
        op->kind = reading ? OP_READ : OP_WRITE;
        op->host_off = map.host_off;
        op->len = len;
        io->cursor = pos + len;
        return 1;
    }
    if (reading) {
        if ((rc = read_inline(io, &map, pos, len)) != RT_OK)
            return rc;
        io->cursor = pos + len;
        return 0;
    }
    /* A write into a unit that is not plain data: allocate, and write the whole unit,
     * filled with what the guest saw there before. */
    uint64_t unit_off = round_down(pos, vd->alloc_unit);
    uint8_t *unit = rt_mem_page_alloc(vd->alloc_unit);
    if (unit == NULL)
        return RT_ERR_NO_MEMORY;
    if ((rc = fill_unit(vd, &map, pos, unit_off, unit, io->cursor_end)) != RT_OK) {
        rt_mem_page_free(unit, vd->alloc_unit);
        return rc;
    }
    struct vd_alloc alloc;
    if ((rc = vd->driver->alloc(vd, pos, &alloc)) != RT_OK) {
        rt_mem_page_free(unit, vd->alloc_unit);
        return rc;
    }
    len = min_u64(io->cursor_end, alloc.virt_off + alloc.size) - pos;
    iov_copy(io->target, io->target_cnt, pos - io->target_base, unit + (pos - alloc.virt_off),
             len, false);
    if ((rc = op_reserve_iov(op, 1)) != RT_OK) {
        rt_mem_page_free(unit, alloc.size);
        vd->driver->alloc_done(vd, &alloc, rc, 0);
        return rc;
    }
    op->iov[0].base = unit;
    op->iov[0].len = alloc.size;
    op->iovcnt = 1;
    op->kind = OP_WRITE;
    op->host_off = alloc.host_off;
    op->len = alloc.size;
    op->is_alloc = true;
    op->alloc = alloc;
    op->unit = unit;
    io->cursor = pos + len;
    return 1;
}

static void submit_batch(struct rt_vd_queue *q)
{
    if (q->batch_len == 0)
        return;
    int rc = rt_aio_ctx_submit(q->ctx, q->batch, q->batch_len);
    if (rc == RT_OK) {
        q->in_flight += q->batch_len;
    } else {
        /* Nothing was submitted: every op fails its request. */
        for (uint32_t i = 0; i < q->batch_len; i++) {
            struct vd_op *op = rt_aio_req_get_user(q->batch[i]);
            struct vd_io *io = op->io;
            if (op->is_alloc)
                io->vd->driver->alloc_done(io->vd, &op->alloc, rc, 0);
            if (io->status == RT_OK)
                io->status = rc;
            io->pending--;
            op_release(q, op);
            ready_push(q, io);
        }
    }
    q->batch_len = 0;
}

/* Advances every ready request as far as free ops allow, then submits. */
static void pump(struct rt_vd_queue *q)
{
    struct vd_io *io;
    while (q->free_ops != NULL && (io = ready_pop(q)) != NULL) {
        for (;;) {
            while (io->status == RT_OK && io->cursor < io->cursor_end && q->free_ops != NULL) {
                struct vd_op *op = q->free_ops;
                int rc = step(io, op);
                if (rc < 0) {
                    io->status = rc;
                    break;
                }
                if (rc == 0)
                    continue;
                q->free_ops = op->next_free;
                op->io = io;
                rc = op_prepare(op, io->vd->file);
                if (rc != RT_OK) {
                    if (op->is_alloc)
                        io->vd->driver->alloc_done(io->vd, &op->alloc, rc, 0);
                    op_release(q, op);
                    io->status = rc;
                    break;
                }
                io->pending++;
                q->batch[q->batch_len++] = op->req;
            }
            if (io->status == RT_OK && io->cursor < io->cursor_end) {
                ready_push(q, io); /* out of ops: continue later */
                break;
            }
            if (io->pending > 0)
                break; /* completions bring it back */
            next_stage(io);
            if (io->stage == STAGE_DONE)
                break;
        }
    }
    submit_batch(q);
}

static void op_complete(struct rt_vd_queue *q, struct vd_op *op)
{
    struct vd_io *io = op->io;
    rt_vd_t vd = io->vd;
    size_t done = 0;
    int rc = rt_aio_req_get_rc(op->req, &done);
    q->in_flight--;
    if (rc == RT_OK && op->kind != OP_FLUSH && done < op->len) {
        if (op->kind == OP_READ) {
            /* The file ends early (a raw image shrunk under us): zeros, as past EOF. */
            iov_copy(op->iov, op->iovcnt, done, NULL, op->len - done, true);
        } else if (done == 0) {
            rc = RT_ERR_DISK_FULL;
        } else {
            /* A short write: send the rest. */
            rt_iovec_t *rest = op->iov;
            unsigned n = iov_slice(op->iov, op->iovcnt, done, op->len - done, rest);
            op->iovcnt = n;
            op->host_off += done;
            op->len -= done;
            if (op_prepare(op, vd->file) == RT_OK &&
                rt_aio_ctx_submit(q->ctx, &op->req, 1) == RT_OK) {
                q->in_flight++;
                return;
            }
            rc = RT_ERR_IO;
        }
    }
    if (op->is_alloc) {
        uint64_t seq = 0;
        if (rc == RT_OK)
            seq = ++vd->alloc_seq;
        vd->driver->alloc_done(vd, &op->alloc, rc, seq);
    }
    if (rc != RT_OK && io->status == RT_OK)
        io->status = rc;
    io->pending--;
    op_release(q, op);
    if (io->pending == 0)
        ready_push(q, io);
}

/* ---------------------------------------------------------------------------------- */
/* Completion delivery. */

static void io_free(struct vd_io *io)
{
    if (io->bounce != NULL)
        rt_mem_page_free(io->bounce, io->bounce_len);
    if (io->iov != io->iov_inline)
        free(io->iov);
    free(io);
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
        io_free(io);
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
    for (uint32_t i = 0; q->ops != NULL && i < q->depth; i++) {
        rt_aio_req_destroy(q->ops[i].req);
        free(q->ops[i].iov);
    }
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
    int rc = RT_ERR_NO_MEMORY;
    q->ops = calloc(depth, sizeof(*q->ops));
    q->batch = calloc(depth, sizeof(*q->batch));
    q->reaped = calloc(depth, sizeof(*q->reaped));
    if (q->ops == NULL || q->batch == NULL || q->reaped == NULL)
        goto fail;
    for (uint32_t i = 0; i < depth; i++) {
        if ((rc = rt_aio_req_create(&q->ops[i].req)) != RT_OK)
            goto fail;
        q->ops[i].next_free = q->free_ops;
        q->free_ops = &q->ops[i];
    }
    if ((rc = rt_aio_ctx_create(&q->ctx, depth, 0)) != RT_OK)
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

static int queue_start(struct rt_vd_queue *q, rt_vd_t vd, int kind, uint64_t off,
                       const rt_iovec_t *iov, unsigned iovcnt, rt_vd_done_t *done, void *user)
{
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    uint64_t total = 0;
    int rc = rt__vd_check_request(vd, kind, off, iov, iovcnt, &total);
    if (rc != RT_OK)
        return rc;
    if (done == NULL)
        return RT_ERR_INVALID_POINTER;
    if (vd->busy_queue != NULL && vd->busy_queue != q)
        return RT_ERR_BUSY;
    if (kind == VD_IO_WRITE && total > 0 && (rc = rt__vd_begin_write(vd)) != RT_OK)
        return rc;
    struct vd_io *io = calloc(1, sizeof(*io));
    if (io == NULL)
        return RT_ERR_NO_MEMORY;
    io->vd = vd;
    io->queue = q;
    io->kind = kind;
    io->off = off;
    io->len = total;
    io->done = done;
    io->user = user;
    io->iov = iovcnt <= INLINE_IOV ? io->iov_inline : malloc(iovcnt * sizeof(*iov));
    if (io->iov == NULL) {
        free(io);
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
        io_free(io);
        return rc;
    }
    vd->busy_queue = q;
    vd->outstanding++;
    q->ios++;
    active_append(vd, io);
    if (trivial) {
        io->running = true;
        io->stage = STAGE_DONE;
        done_push(q, io);
    } else {
        try_start(io);
    }
    return RT_OK;
}

int rt_vd_queue_read(rt_vd_queue_t q, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                     unsigned iovcnt, rt_vd_done_t *done, void *user)
{
    return queue_start(q, vd, VD_IO_READ, off, iov, iovcnt, done, user);
}

int rt_vd_queue_write(rt_vd_queue_t q, rt_vd_t vd, uint64_t off, const rt_iovec_t *iov,
                      unsigned iovcnt, rt_vd_done_t *done, void *user)
{
    return queue_start(q, vd, VD_IO_WRITE, off, iov, iovcnt, done, user);
}

int rt_vd_queue_flush(rt_vd_queue_t q, rt_vd_t vd, rt_vd_done_t *done, void *user)
{
    if (!queue_live(q))
        return RT_ERR_INVALID_HANDLE;
    return queue_start(q, vd, VD_IO_FLUSH, 0, NULL, 0, done, user);
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
        if (q->ready.head != NULL && q->free_ops != NULL)
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
        rc = rt_aio_ctx_wait(q->ctx, 1, wait_ms, q->reaped, q->depth, &got);
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

int rt__vd_sync_io(rt_vd_t vd, int kind, uint64_t off, const rt_iovec_t *iov, unsigned iovcnt)
{
    if (vd->outstanding > 0)
        return RT_ERR_BUSY;
    int rc;
    if (vd->sync_queue == NULL && (rc = rt_vd_queue_create(&vd->sync_queue, SYNC_DEPTH)) != RT_OK)
        return rc;
    struct sync_wait w = {false, RT_OK};
    rc = queue_start(vd->sync_queue, vd, kind, off, iov, iovcnt, sync_done, &w);
    while (rc == RT_OK && !w.done)
        rc = rt_vd_queue_run(vd->sync_queue, 1, RT_INDEFINITE_WAIT, NULL);
    return rc != RT_OK ? rc : w.status;
}

void rt__vd_queue_release_sync(rt_vd_t vd)
{
    rt_vd_queue_destroy(vd->sync_queue);
    vd->sync_queue = NULL;
}
