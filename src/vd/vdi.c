/*
 * VDI, VirtualBox's native format (version 1.1), dynamic and static.
 *
 *   0x000  pre-header: 64 bytes of text, signature 0xbeda107f, version 0x00010001
 *   0x048  header: size, type (1 dynamic, 2 static), offsets of the block map and of
 *          the data, disk size, block size, blocks in image, blocks allocated, UUIDs
 *   bmap   one little-endian u32 per guest block: the index of its data block in the
 *          data area, 0xffffffff (unallocated) or 0xfffffffe (reads as zeros)
 *   data   block i at offset_data + i * block_size
 *
 * Every field is checked before use, as strictly as VirtualBox does, and the whole
 * block map is checked on open (indices below the block count, their blocks inside the
 * file, none used twice), so no later read or write can go out of bounds.
 *
 * The header's allocated count is what the next writer of any implementation appends
 * at (VirtualBox and QEMU take data block <count> for a new block), and qemu-img check
 * calls any difference between it and the number of map entries a corruption ("allocated
 * blocks mismatch").  So the count this driver writes is always exactly the number of
 * entries the file's map has after the write, and those entries are always the dense set
 * 0 .. count-1:
 *
 *   - an allocation takes the next index above every entry, pending ones included; its
 *     entry and the count reach the file only at a flush, after its data (the engine
 *     waits for the allocations begun before the flush, so none is still in flight below
 *     one that commits);
 *   - an allocation whose data write failed (a full disk) keeps its block, punched to
 *     zeros (which needs no space): the guest block read as zeros before, so it still
 *     does, and no hole opens below the allocations that succeeded.  Where the file
 *     system cannot punch, the block becomes a hole that the next commit plugs the same
 *     way: punched or written with zeros, and given to a guest block that reads as
 *     zeros anyway (free or zero), so the guest sees no change and the map stays dense
 *     (holes an image has at open are plugged the same way);
 *   - commit writes the header and the changed map sectors in one write when the map
 *     starts right after the header and the changes lie in its first MiB (the images
 *     QEMU, VirtualBox and this driver create): one system call, so a process killed at
 *     any moment leaves either the old count and entries or the new ones.  Otherwise the
 *     count goes first, then a flush, then the entries: a crash between leaves a count
 *     above the entries, which is safe for every writer (they append past it) and which
 *     check reports as leaked blocks.
 *
 * Open accepts entries at or past the count (what a machine crash could leave of the
 * one write, sectors landing out of order): readers lose nothing, this driver appends
 * past them and rewrites the count at its next commit, and check reports the count as
 * a corruption, since another writer would reuse a block in use.
 */
#include "config.h"

#include <rt/mem.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "vd/vd_internal.h"

#define VDI_SIGNATURE   0xbeda107fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_DYNAMIC     1u
#define VDI_STATIC      2u
#define VDI_UNDO        3u
#define VDI_DIFF        4u
#define VDI_FREE        0xffffffffu
#define VDI_ZERO        0xfffffffeu
#define VDI_HEADER_LEN  512u
#define VDI_SECTOR      512u

/* Header field offsets (see the diagram above). */
enum {
    OFF_TEXT = 0x000,
    OFF_SIGNATURE = 0x040,
    OFF_VERSION = 0x044,
    OFF_HEADER_SIZE = 0x048,
    OFF_TYPE = 0x04c,
    OFF_FLAGS = 0x050,
    OFF_BMAP = 0x154,
    OFF_DATA = 0x158,
    OFF_SECTOR_SIZE = 0x168,
    OFF_DISK_SIZE = 0x170,
    OFF_BLOCK_SIZE = 0x178,
    OFF_BLOCK_EXTRA = 0x17c,
    OFF_BLOCKS = 0x180,
    OFF_ALLOCATED = 0x184,
    OFF_UUID_IMAGE = 0x188,
    OFF_UUID_LAST_SNAP = 0x198,
    OFF_UUID_LINK = 0x1a8,
    OFF_UUID_PARENT = 0x1b8,
};

/* The header-size field counts from OFF_HEADER_SIZE; 0x180 is version 1.1's minimum
 * (what QEMU writes), and the header must end inside the first sector. */
#define HEADER_SIZE_MIN 0x180u
#define HEADER_SIZE_MAX (VDI_HEADER_LEN - OFF_HEADER_SIZE)
#define BLOCK_SIZE_MIN  512u
#define BLOCK_SIZE_MAX  (64u << 20)
#define DEFAULT_BLOCK   (1u << 20)
#define VDI_MAX_BLOCKS  0x3fffffffu
#define DATA_ALIGN      (1u << 20)

/* An allocation whose map entry is not yet on disk. */
struct pending {
    uint32_t block;
    uint32_t previous; /* the entry before allocation, restored if the data write fails */
    uint64_t seq;      /* 0 while the data write is in flight */
    bool from_hole;    /* its index was a hole below others (the index space was full) */
};

struct vdi {
    uint8_t header[VDI_HEADER_LEN];
    uint32_t type;
    uint32_t block_size;
    uint32_t blocks;
    uint32_t next_index;    /* above every data block index in use or reserved */
    uint32_t count_on_disk; /* the allocated count the header holds */
    uint64_t offset_bmap;
    uint64_t offset_data;
    uint32_t *bmap;      /* host order, with pending allocations */
    uint32_t *bmap_disk; /* the entries the file holds (host order) */
    struct pending *pending;
    size_t pending_len, pending_cap;
    /* Data block indices below next_index that no entry uses and no allocation holds:
     * failed allocations, and the leaks an image had at open. */
    uint32_t *holes;
    size_t holes_len, holes_cap;
};

static struct vdi *vdi_of(rt_vd_t vd)
{
    return vd->priv;
}

static bool power_of_two(uint32_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

static bool uuid_is_null(const uint8_t *uuid)
{
    for (int i = 0; i < 16; i++)
        if (uuid[i] != 0)
            return false;
    return true;
}

static uint64_t block_host_off(const struct vdi *v, uint32_t index)
{
    return v->offset_data + (uint64_t)index * v->block_size;
}

static int vdi_probe(const struct vd_probe *p)
{
    if (p->head_len < OFF_VERSION + 4)
        return 0;
    return vd_le32(p->head + OFF_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

/* ---------------------------------------------------------------------------------- */
/* Open: the header, then the block map, each field checked before it is used. */

static int check_header(struct vdi *v, uint64_t file_size, rt_vd_error_t *err)
{
    const uint8_t *h = v->header;
    uint32_t signature = vd_le32(h + OFF_SIGNATURE);
    if (signature != VDI_SIGNATURE)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "not a VDI image (signature 0x%08x, expected 0x%08x)", signature,
                           VDI_SIGNATURE);
    uint32_t version = vd_le32(h + OFF_VERSION);
    if (version != VDI_VERSION_1_1)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED, "VDI version %u.%u is not supported (1.1 is)",
                           version >> 16, version & 0xffff);
    uint32_t header_size = vd_le32(h + OFF_HEADER_SIZE);
    if (header_size < HEADER_SIZE_MIN || header_size > HEADER_SIZE_MAX)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "VDI header size %u is outside %u..%u",
                           header_size, HEADER_SIZE_MIN, HEADER_SIZE_MAX);
    v->type = vd_le32(h + OFF_TYPE);
    if (v->type == VDI_UNDO || v->type == VDI_DIFF)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "VDI %s images are not supported (they need a parent image)",
                           v->type == VDI_UNDO ? "undo" : "differencing");
    if (v->type != VDI_DYNAMIC && v->type != VDI_STATIC)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "unknown VDI image type %u", v->type);
    uint32_t sector_size = vd_le32(h + OFF_SECTOR_SIZE);
    if (sector_size != VDI_SECTOR)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "VDI sector size %u is not %u", sector_size,
                           VDI_SECTOR);
    v->block_size = vd_le32(h + OFF_BLOCK_SIZE);
    if (!power_of_two(v->block_size) || v->block_size < BLOCK_SIZE_MIN ||
        v->block_size > BLOCK_SIZE_MAX)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "VDI block size %u is not a power of two in %u..%u", v->block_size,
                           BLOCK_SIZE_MIN, BLOCK_SIZE_MAX);
    uint32_t extra = vd_le32(h + OFF_BLOCK_EXTRA);
    if (extra != 0)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "VDI blocks with %u extra bytes are not supported", extra);
    uint64_t disk_size = vd_le64(h + OFF_DISK_SIZE);
    v->blocks = vd_le32(h + OFF_BLOCKS);
    if (v->blocks > VDI_MAX_BLOCKS)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "VDI has %u blocks, more than the format's %u",
                           v->blocks, VDI_MAX_BLOCKS);
    if (disk_size % VDI_SECTOR != 0)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT, "VDI disk size %llu is not a multiple of %u",
                           (unsigned long long)disk_size, VDI_SECTOR);
    if (disk_size > (uint64_t)v->blocks * v->block_size)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "VDI disk size %llu exceeds its %u blocks of %u bytes",
                           (unsigned long long)disk_size, v->blocks, v->block_size);
    v->count_on_disk = vd_le32(h + OFF_ALLOCATED);
    if (v->count_on_disk > v->blocks)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "VDI allocated block count %u exceeds the %u blocks in the image",
                           v->count_on_disk, v->blocks);
    v->offset_bmap = vd_le32(h + OFF_BMAP);
    v->offset_data = vd_le32(h + OFF_DATA);
    if (v->offset_bmap % VDI_SECTOR != 0 || v->offset_bmap < OFF_HEADER_SIZE + header_size)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "VDI block map offset 0x%llx is unaligned or overlaps the header",
                           (unsigned long long)v->offset_bmap);
    uint64_t bmap_end = 0;
    if (!vd_table_inside(v->offset_bmap, v->blocks, 4, file_size, &bmap_end))
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "VDI block map (%u entries at 0x%llx) extends past the end of the "
                           "file (%llu bytes)",
                           v->blocks, (unsigned long long)v->offset_bmap,
                           (unsigned long long)file_size);
    bmap_end += v->offset_bmap;
    if (v->offset_data % VDI_SECTOR != 0 || v->offset_data < bmap_end)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "VDI data offset 0x%llx is unaligned or overlaps the block map "
                           "(which ends at 0x%llx)",
                           (unsigned long long)v->offset_data, (unsigned long long)bmap_end);
    if (!uuid_is_null(h + OFF_UUID_LINK) || !uuid_is_null(h + OFF_UUID_PARENT))
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "VDI image links to a parent image, which is not supported");
    return RT_OK;
}

static int push_hole(struct vdi *v, uint32_t index)
{
    uint32_t *grown = rt__vd_grow(v->holes, &v->holes_cap, v->holes_len, sizeof(*grown), 16);
    if (grown == NULL)
        return RT_ERR_NO_MEMORY;
    v->holes = grown;
    v->holes[v->holes_len++] = index;
    return RT_OK;
}

static int load_bmap(rt_vd_t vd, struct vdi *v, uint64_t file_size, rt_vd_error_t *err)
{
    size_t bytes = (size_t)v->blocks * 4u;
    /* Read in place: the little-endian bytes become host-order entries one by one. */
    v->bmap = malloc(bytes ? bytes : 1);
    v->bmap_disk = malloc(bytes ? bytes : 1);
    uint8_t *raw = (uint8_t *)v->bmap;
    uint8_t *used = calloc(v->blocks ? v->blocks : 1, 1);
    uint32_t *owner = malloc((v->blocks ? v->blocks : 1) * sizeof(*owner));
    int rc = RT_ERR_NO_MEMORY;
    if (v->bmap == NULL || v->bmap_disk == NULL || used == NULL || owner == NULL)
        goto out;
    if (bytes > 0 && (rc = rt__vd_meta_read(vd, v->offset_bmap, raw, bytes)) != RT_OK) {
        rt__vd_fail(err, rc, "cannot read the VDI block map");
        goto out;
    }
    rc = RT_OK;
    v->next_index = 0;
    for (uint32_t i = 0; i < v->blocks; i++) {
        uint32_t e = vd_le32(raw + 4u * i);
        v->bmap[i] = e;
        if (e == VDI_FREE || e == VDI_ZERO)
            continue;
        if (e >= v->blocks) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "VDI block map entry %u points at data block %u, but the image "
                             "has only %u blocks",
                             i, e, v->blocks);
            break;
        }
        uint64_t end;
        if (!vd_add(block_host_off(v, e), v->block_size, &end) || end > file_size) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "VDI block map entry %u points at data block %u, past the end "
                             "of the file",
                             i, e);
            break;
        }
        if (used[e]) {
            rc = rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                             "VDI block map entries %u and %u both point at data block %u",
                             owner[e], i, e);
            break;
        }
        used[e] = 1;
        owner[e] = i;
        if (e + 1 > v->next_index)
            v->next_index = e + 1;
    }
    if (rc == RT_OK)
        memcpy(v->bmap_disk, v->bmap, bytes);
    /* Unused indices below the highest one in use are holes: plugged at a commit. */
    for (uint32_t e = 0; rc == RT_OK && e < v->next_index; e++)
        if (!used[e])
            rc = push_hole(v, e);
out:
    free(used);
    free(owner);
    return rc;
}

static int vdi_open(rt_vd_t vd, const char *const *options, rt_vd_error_t *err)
{
    uint64_t file_size = 0;
    int rc = rt_file_get_size(vd->file, &file_size);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot read the file size");
    if (file_size < VDI_HEADER_LEN)
        return rt__vd_fail(err, RT_ERR_VD_CORRUPT,
                           "file of %llu bytes is too small for a VDI header",
                           (unsigned long long)file_size);
    struct vdi *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return RT_ERR_NO_MEMORY;
    if ((rc = rt__vd_meta_read(vd, 0, v->header, VDI_HEADER_LEN)) != RT_OK)
        rt__vd_fail(err, rc, "cannot read the VDI header");
    else if ((rc = check_header(v, file_size, err)) == RT_OK)
        rc = load_bmap(vd, v, file_size, err);
    if (rc != RT_OK) {
        free(v->bmap);
        free(v->bmap_disk);
        free(v->holes);
        free(v);
        return rc;
    }
    vd->priv = v;
    vd->size = vd_le64(v->header + OFF_DISK_SIZE);
    vd->alloc_unit = v->block_size;
    /* The largest power of two (up to a page) that every block's offset is a multiple of. */
    uint64_t bits = v->offset_data | v->block_size | 4096u;
    vd->data_align = (uint32_t)(bits & -bits);
    return RT_OK;
}

static void vdi_close(rt_vd_t vd)
{
    struct vdi *v = vdi_of(vd);
    free(v->bmap);
    free(v->bmap_disk);
    free(v->pending);
    free(v->holes);
    free(v);
}

/* ---------------------------------------------------------------------------------- */
/* Create. */

static int vdi_create(rt_file_t file, const rt_vd_create_opts_t *opts, rt_vd_error_t *err)
{
    uint32_t block_size = opts->block_size ? opts->block_size : DEFAULT_BLOCK;
    if (!power_of_two(block_size) || block_size < 4096u || block_size > BLOCK_SIZE_MAX)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "VDI block size %u is not a power of two in 4096..%u", block_size,
                           BLOCK_SIZE_MAX);
    uint64_t blocks = (opts->size + block_size - 1) / block_size;
    if (blocks > VDI_MAX_BLOCKS)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "size %llu needs %llu VDI blocks, more than the format allows",
                           (unsigned long long)opts->size, (unsigned long long)blocks);
    bool is_static = opts->flags & RT_VD_CREATE_STATIC;
    uint64_t offset_bmap = VDI_HEADER_LEN;
    /* Data starts on a MiB boundary, as VirtualBox places it: uncached I/O works on
     * 4 KiB-sector disks, and the map has room to grow (to about 256 GiB of 1 MiB
     * blocks) without moving data. */
    uint64_t offset_data =
        (offset_bmap + blocks * 4u + DATA_ALIGN - 1) & ~(uint64_t)(DATA_ALIGN - 1);
    if (offset_data > UINT32_MAX)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER, "VDI block map too large");

    uint8_t h[VDI_HEADER_LEN] = {0};
    static const char text[] = "<<< vrt Virtual Disk Image >>>\n";
    memcpy(h + OFF_TEXT, text, sizeof(text) - 1);
    vd_put_le32(h + OFF_SIGNATURE, VDI_SIGNATURE);
    vd_put_le32(h + OFF_VERSION, VDI_VERSION_1_1);
    vd_put_le32(h + OFF_HEADER_SIZE, HEADER_SIZE_MIN);
    vd_put_le32(h + OFF_TYPE, is_static ? VDI_STATIC : VDI_DYNAMIC);
    vd_put_le32(h + OFF_BMAP, (uint32_t)offset_bmap);
    vd_put_le32(h + OFF_DATA, (uint32_t)offset_data);
    vd_put_le32(h + OFF_SECTOR_SIZE, VDI_SECTOR);
    vd_put_le64(h + OFF_DISK_SIZE, opts->size);
    vd_put_le32(h + OFF_BLOCK_SIZE, block_size);
    vd_put_le32(h + OFF_BLOCKS, (uint32_t)blocks);
    vd_put_le32(h + OFF_ALLOCATED, is_static ? (uint32_t)blocks : 0u);
    for (int off = OFF_UUID_IMAGE; off <= OFF_UUID_LAST_SNAP; off += 16) {
        if (getrandom(h + off, 16, 0) != 16)
            return rt__vd_fail(err, RT_ERR_GENERAL_FAILURE, "no random bytes for a UUID");
        h[off + 7] = (uint8_t)((h[off + 7] & 0x0f) | 0x40); /* version 4, little-endian */
        h[off + 8] = (uint8_t)((h[off + 8] & 0x3f) | 0x80);
    }
    int rc = rt_file_write_at(file, 0, h, sizeof(h), NULL);
    if (rc != RT_OK)
        return rc;

    /* The block map, written a chunk at a time. */
    enum { CHUNK = 16384 };
    uint8_t chunk[CHUNK * 4];
    for (uint64_t first = 0; first < blocks && rc == RT_OK; first += CHUNK) {
        uint64_t n = blocks - first < CHUNK ? blocks - first : CHUNK;
        for (uint64_t i = 0; i < n; i++)
            vd_put_le32(chunk + 4 * i, is_static ? (uint32_t)(first + i) : VDI_FREE);
        rc = rt_file_write_at(file, offset_bmap + first * 4u, chunk, (size_t)n * 4u, NULL);
    }
    if (rc != RT_OK)
        return rc;
    return rt_file_set_size(file, offset_data + (is_static ? blocks * block_size : 0));
}

/* ---------------------------------------------------------------------------------- */
/* Map and allocation. */

static enum vd_map_kind entry_kind(uint32_t e)
{
    return e == VDI_FREE ? VD_MAP_UNALLOCATED : e == VDI_ZERO ? VD_MAP_ZERO : VD_MAP_DATA;
}

static int vdi_map(rt_vd_t vd, uint64_t off, uint64_t len, struct vd_map *map,
                   struct vd_load *load)
{
    (void)load; /* the block map is in memory from open on */
    struct vdi *v = vdi_of(vd);
    uint32_t block = (uint32_t)(off / v->block_size);
    uint32_t e = v->bmap[block];
    map->kind = entry_kind(e);
    map->shared = false;
    map->host_off = map->kind == VD_MAP_DATA ? block_host_off(v, e) + off % v->block_size : 0;
    uint64_t length = v->block_size - off % v->block_size;
    /* Runs of blocks answer together: same kind, and for data, contiguous in the file. */
    while (length < len && ++block < v->blocks) {
        uint32_t next = v->bmap[block];
        if (entry_kind(next) != map->kind || (map->kind == VD_MAP_DATA && next != ++e))
            break;
        length += v->block_size;
    }
    map->length = length < len ? length : len;
    return RT_OK;
}

static int vdi_alloc(rt_vd_t vd, uint64_t off, struct vd_alloc *alloc)
{
    struct vdi *v = vdi_of(vd);
    uint32_t block = (uint32_t)(off / v->block_size);
    struct pending *grown;

    grown = rt__vd_grow(v->pending, &v->pending_cap, v->pending_len, sizeof(*grown), 16);
    if (grown == NULL)
        return RT_ERR_NO_MEMORY;
    v->pending = grown;
    uint32_t index;
    bool from_hole = false;
    if (v->next_index < v->blocks) {
        index = v->next_index++;
    } else if (v->holes_len > 0) {
        from_hole = true;
        /* Every index is taken, so a hole is left: this allocation fills it.  Nothing
         * in the file points at it (holes are never entries), so nothing is lost. */
        index = v->holes[--v->holes_len];
    } else {
        return RT_ERR_VD_CORRUPT; /* every block in use: then the map would not say free */
    }
    v->pending[v->pending_len++] = (struct pending){block, v->bmap[block], 0, from_hole};
    v->bmap[block] = index;
    alloc->virt_off = (uint64_t)block * v->block_size;
    alloc->host_off = block_host_off(v, index);
    alloc->size = v->block_size;
    alloc->index = block;
    /* Not fresh, even past the end of the file: a VDI block must lie wholly inside the
     * file (open checks it), so its zeros are written. */
    alloc->fresh = false;
    return RT_OK;
}

/* Makes data block @a index read as zeros without needing space: punched, and the file
 * extended (sparsely) to cover it when the failed write never got that far. */
static int zero_block_in_place(rt_vd_t vd, struct vdi *v, uint32_t index)
{
    uint64_t off = block_host_off(v, index), size = 0;
    int rc = rt__vd_punch(vd, off, v->block_size);
    if (rc == RT_OK)
        rc = rt_file_get_size(vd->file, &size);
    if (rc == RT_OK && size < off + v->block_size)
        rc = rt_file_set_size(vd->file, off + v->block_size);
    return rc;
}

static void vdi_alloc_done(rt_vd_t vd, const struct vd_alloc *alloc, int status, uint64_t seq)
{
    struct vdi *v = vdi_of(vd);
    for (size_t i = v->pending_len; i-- > 0;) {
        struct pending *p = &v->pending[i];
        if (p->block != alloc->index || p->seq != 0)
            continue;
        if (status == RT_OK) {
            p->seq = seq;
            return;
        }
        /* The data never made it.  The guest block read as zeros before (VDI allocates
         * only free and zero blocks), so the data block punched to zeros keeps what the
         * guest sees, and stays allocated: no hole in the map for a full disk to leave
         * (the punch needs no space).  The next flush makes the punch durable before the
         * entry, as for any allocation. */
        uint32_t index = v->bmap[p->block];
        if (zero_block_in_place(vd, v, index) == RT_OK) {
            p->seq = ++vd->alloc_seq;
            return;
        }
        /* Where nothing can punch: the guest block maps as before, and its data block
         * becomes a hole for the next commit to plug (or, at the top, is taken back). */
        v->bmap[p->block] = p->previous;
        v->pending[i] = v->pending[--v->pending_len];
        if (index + 1 == v->next_index)
            v->next_index--;
        else
            (void)push_hole(v, index); /* without memory for it the index stays unused */
        return;
    }
}

/* Does @a p go into the file at this commit?  It must be complete before the flush's
 * FLUSH1 (seq <= @a upto), and below @a barrier: an allocation begun after the flush
 * started may complete before one begun earlier but still in flight, and committing the
 * later one would leave a hole at the earlier one's index.  It waits for the next flush,
 * which is allowed: no write begun after a flush started is owed by it, and every
 * allocation begun before it is complete (the engine waited) and below any later one. */
static bool commit_now(const struct vdi *v, const struct pending *p, uint64_t upto,
                       uint32_t barrier)
{
    return p->seq != 0 && p->seq <= upto && v->bmap[p->block] < barrier;
}

/* The lowest index an allocation that is not committable holds (UINT32_MAX: none).  One
 * that took a hole below others (the index space was full) does not count: it may lie
 * below allocations the flush owes, and those come first (a hole in the file's map is
 * then possible until it commits, which every writer survives). */
static uint32_t commit_barrier(const struct vdi *v, uint64_t upto)
{
    uint32_t barrier = UINT32_MAX;
    for (size_t i = 0; i < v->pending_len; i++) {
        const struct pending *p = &v->pending[i];
        if ((p->seq == 0 || p->seq > upto) && !p->from_hole && v->bmap[p->block] < barrier)
            barrier = v->bmap[p->block];
    }
    return barrier;
}

/* The highest data block index the file's map holds after this commit, plus one: the
 * count to write. */
static uint32_t count_after(const struct vdi *v, uint64_t upto, uint32_t barrier)
{
    uint32_t count = 0;
    for (uint32_t i = 0; i < v->blocks; i++) {
        uint32_t e = v->bmap_disk[i];
        if (entry_kind(e) == VD_MAP_DATA && e + 1 > count)
            count = e + 1;
    }
    for (size_t i = 0; i < v->pending_len; i++) {
        const struct pending *p = &v->pending[i];
        if (commit_now(v, p, upto, barrier) && v->bmap[p->block] + 1 > count)
            count = v->bmap[p->block] + 1;
    }
    return count;
}

/* A guest block that reads as zeros and has no allocation pending: the one a plugged
 * hole is given to.  Searched from the end of the disk. */
static bool zero_guest_block(const struct vdi *v, uint32_t *block)
{
    for (uint32_t i = v->blocks; i-- > 0;)
        if (entry_kind(v->bmap[i]) != VD_MAP_DATA) {
            *block = i;
            return true;
        }
    return false;
}

/* Makes data block @a index read as zeros: punched where the file system can (which
 * needs no space, the point after a full disk), else written with zeros. */
static int zero_data_block(rt_vd_t vd, struct vdi *v, uint32_t index)
{
    uint64_t off = block_host_off(v, index);
    int rc = zero_block_in_place(vd, v, index);
    if (rc != RT_ERR_NOT_SUPPORTED)
        return rc;
    uint8_t *zeros = rt_mem_page_alloc(64u << 10);
    if (zeros == NULL)
        return RT_ERR_NO_MEMORY;
    rc = RT_OK;
    for (uint64_t done = 0; rc == RT_OK && done < v->block_size; done += 64u << 10)
        rc = rt__vd_meta_write(vd, off + done, zeros,
                               (size_t)(v->block_size - done < (64u << 10) ? v->block_size - done
                                                                          : (64u << 10)));
    rt_mem_page_free(zeros, 64u << 10);
    return rc;
}

/* The header sector and the map sectors up to the one holding entry @a last, from
 * what the file is to hold, in one write: when the map follows the header and that span
 * is small (*@a done says whether it applied). */
#define ONE_WRITE_MAX (1u << 20)

static int write_header_and_map(rt_vd_t vd, struct vdi *v, uint32_t last, bool *done)
{
    *done = false;
    uint64_t map_end = v->offset_bmap + 4u * (uint64_t)v->blocks;
    uint64_t end = v->offset_bmap + 4u * ((uint64_t)last + 1);
    end = (end + VDI_SECTOR - 1) / VDI_SECTOR * VDI_SECTOR;
    if (v->offset_bmap != VDI_HEADER_LEN || end > ONE_WRITE_MAX)
        return RT_OK;
    uint8_t *buf = calloc(1, (size_t)end);
    if (buf == NULL)
        return RT_ERR_NO_MEMORY;
    memcpy(buf, v->header, VDI_HEADER_LEN);
    for (uint64_t i = 0; i < v->blocks && v->offset_bmap + 4u * i + 4u <= end; i++)
        vd_put_le32(buf + v->offset_bmap + 4u * i, v->bmap_disk[i]);
    int rc = RT_OK;
    if (end > map_end) /* the last map sector's padding: keep the file's bytes */
        rc = rt__vd_meta_read(vd, map_end, buf + map_end, (size_t)(end - map_end));
    if (rc == RT_OK)
        rc = rt__vd_meta_write(vd, 0, buf, (size_t)end);
    free(buf);
    *done = rc == RT_OK;
    return rc;
}

static int write_entry(rt_vd_t vd, struct vdi *v, uint32_t block)
{
    uint8_t le[4];
    vd_put_le32(le, v->bmap_disk[block]);
    return rt__vd_meta_write(vd, v->offset_bmap + 4u * (uint64_t)block, le, sizeof(le));
}

/* Writes the count in the header and the entries of @a changed (@a n of them, the
 * highest @a last) in the order the head comment gives. */
static int write_count_and_entries(rt_vd_t vd, struct vdi *v, uint32_t count,
                                   const uint32_t *changed, size_t n, uint32_t last)
{
    vd_put_le32(v->header + OFF_ALLOCATED, count);
    bool done = false;
    int rc = n > 0 ? write_header_and_map(vd, v, last, &done) : RT_OK;
    if (rc == RT_OK && !done) {
        if (count != v->count_on_disk) {
            rc = rt__vd_meta_write(vd, 0, v->header, VDI_HEADER_LEN);
            if (rc == RT_OK && n > 0)
                rc = rt__vd_meta_flush(vd);
        }
        for (size_t i = 0; rc == RT_OK && i < n; i++)
            rc = write_entry(vd, v, changed[i]);
    }
    if (rc == RT_OK)
        v->count_on_disk = count;
    return rc;
}

static int vdi_commit(rt_vd_t vd, uint64_t upto)
{
    struct vdi *v = vdi_of(vd);
    uint32_t barrier = commit_barrier(v, upto);
    size_t committable = 0;
    for (size_t i = 0; i < v->pending_len; i++)
        if (commit_now(v, &v->pending[i], upto, barrier))
            committable++;
    if (committable == 0)
        return 0;
    uint32_t count = count_after(v, upto, barrier);
    uint32_t *changed = malloc((committable + v->holes_len) * sizeof(*changed));
    /* What to put back if the write fails (a full disk: the next flush tries again,
     * and must find every entry still to write). */
    uint32_t *was_on_disk = malloc((committable + v->holes_len) * sizeof(*was_on_disk));
    uint32_t *plugged_holes = malloc((v->holes_len ? v->holes_len : 1) * sizeof(*plugged_holes));
    struct pending *taken = malloc(committable * sizeof(*taken));
    if (changed == NULL || was_on_disk == NULL || plugged_holes == NULL || taken == NULL) {
        free(changed);
        free(was_on_disk);
        free(plugged_holes);
        free(taken);
        return RT_ERR_NO_MEMORY;
    }
    size_t ntaken = 0;
    size_t n = 0;
    uint32_t last = 0;

    /* Holes below the new count get a guest block that reads as zeros, their data
     * punched to zeros first and made durable before the entry that points at them. */
    int rc = RT_OK;
    size_t plugged = 0;
    for (size_t i = 0; rc == RT_OK && i < v->holes_len;) {
        uint32_t hole = v->holes[i], block;
        if (hole >= count || !zero_guest_block(v, &block)) {
            i++;
            continue;
        }
        if ((rc = zero_data_block(vd, v, hole)) != RT_OK)
            break;
        was_on_disk[n] = v->bmap_disk[block];
        plugged_holes[plugged] = hole;
        v->bmap[block] = v->bmap_disk[block] = hole;
        changed[n++] = block;
        last = block > last ? block : last;
        v->holes[i] = v->holes[--v->holes_len];
        plugged++;
    }
    if (rc == RT_OK && plugged > 0)
        rc = rt__vd_meta_flush(vd);
    for (size_t i = 0; rc == RT_OK && i < v->pending_len;) {
        struct pending *p = &v->pending[i];
        if (!commit_now(v, p, upto, barrier)) {
            i++;
            continue;
        }
        was_on_disk[n] = v->bmap_disk[p->block];
        v->bmap_disk[p->block] = v->bmap[p->block];
        changed[n++] = p->block;
        last = p->block > last ? p->block : last;
        taken[ntaken++] = *p;
        *p = v->pending[--v->pending_len];
    }
    if (rc == RT_OK)
        rc = write_count_and_entries(vd, v, count, changed, n, last);
    if (rc != RT_OK) {
        /* Nothing of it counts as written: the on-disk view goes back, plugged holes
         * are holes again (their guest blocks read as zeros either way), and the
         * allocations are pending again (the array had room for them). */
        for (size_t i = 0; i < n; i++)
            v->bmap_disk[changed[i]] = was_on_disk[i];
        for (size_t i = 0; i < plugged; i++) {
            v->bmap[changed[i]] = was_on_disk[i];
            v->holes[v->holes_len++] = plugged_holes[i];
        }
        for (size_t i = 0; i < ntaken; i++)
            v->pending[v->pending_len++] = taken[i];
    }
    free(changed);
    free(was_on_disk);
    free(plugged_holes);
    free(taken);
    return rc == RT_OK ? 1 : rc;
}

/* ---------------------------------------------------------------------------------- */
/* Check and leak repair. */

/* Moves data block @a from to the unused block @a to and repoints @a owner's entry:
 * copy (a MiB at a time), flush, repoint, flush.  A crash at any point leaves a leak,
 * never a loss. */
static int move_block(rt_vd_t vd, struct vdi *v, uint32_t owner, uint32_t from, uint32_t to)
{
    uint32_t piece = v->block_size < (1u << 20) ? v->block_size : (1u << 20);
    uint8_t *buf = rt_mem_page_alloc(piece);
    if (buf == NULL)
        return RT_ERR_NO_MEMORY;
    int rc = RT_OK;
    for (uint32_t done = 0; rc == RT_OK && done < v->block_size; done += piece) {
        rc = rt__vd_meta_read(vd, block_host_off(v, from) + done, buf, piece);
        if (rc == RT_OK)
            rc = rt__vd_meta_write(vd, block_host_off(v, to) + done, buf, piece);
    }
    rt_mem_page_free(buf, piece);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc != RT_OK)
        return rc;
    v->bmap[owner] = v->bmap_disk[owner] = to;
    rc = write_entry(vd, v, owner);
    return rc == RT_OK ? rt__vd_meta_flush(vd) : rc;
}

/* Fills each hole below the referenced count with the highest block above it, then
 * lowers the count and cuts the file after the last block. */
static int repair_leaks(rt_vd_t vd, struct vdi *v, uint32_t *owner, uint32_t top,
                        uint32_t referenced)
{
    for (uint32_t hole = 0; hole < referenced; hole++) {
        if (owner[hole] != VDI_FREE)
            continue;
        while (owner[top - 1] == VDI_FREE)
            top--;
        uint32_t from = --top;
        int rc = move_block(vd, v, owner[from], from, hole);
        if (rc != RT_OK)
            return rc;
        owner[hole] = owner[from];
        owner[from] = VDI_FREE;
    }
    v->next_index = referenced;
    v->holes_len = 0;
    int rc = write_count_and_entries(vd, v, referenced, NULL, 0, 0);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc == RT_OK)
        rc = rt_file_set_size(vd->file, block_host_off(v, referenced));
    return rc == RT_OK ? rt__vd_meta_flush(vd) : rc;
}

static void check_problem(rt_vd_check_result_t *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void check_problem(rt_vd_check_result_t *res, const char *fmt, ...)
{
    if (res->corruptions++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(res->first_problem, sizeof(res->first_problem), fmt, ap);
        va_end(ap);
    }
}

/* Checks the map as the file holds it (the layer has committed first). */
static int vdi_check(rt_vd_t vd, uint32_t flags, rt_vd_check_result_t *res)
{
    struct vdi *v = vdi_of(vd);
    uint64_t file_size = 0;
    int rc = rt_file_get_size(vd->file, &file_size);
    if (rc != RT_OK)
        return rc;
    uint32_t count = v->count_on_disk;
    uint32_t top = count > v->next_index ? count : v->next_index;
    uint32_t *owner = malloc((top ? top : 1) * sizeof(*owner));
    if (owner == NULL)
        return RT_ERR_NO_MEMORY;
    for (uint32_t i = 0; i < top; i++)
        owner[i] = VDI_FREE;
    uint32_t referenced = 0, above = 0;
    for (uint32_t i = 0; i < v->blocks; i++) {
        uint32_t e = v->bmap_disk[i];
        if (e == VDI_FREE || e == VDI_ZERO)
            continue;
        if (e >= top || owner[e] != VDI_FREE) {
            /* Open refuses both; seen here only if memory was overwritten. */
            check_problem(res, "block map entry %u points at data block %u twice or out of range",
                          i, e);
            continue;
        }
        if (e >= count && above++ == 0)
            check_problem(res,
                          "the header counts %u allocated blocks, but block map entry %u uses "
                          "data block %u: another writer would hand it out again",
                          count, i, e);
        owner[e] = i;
        referenced++;
    }
    res->blocks_allocated = referenced;
    res->blocks_total = v->blocks;
    res->leaks = count > referenced ? count - referenced : 0;
    uint64_t end = block_host_off(v, top);
    if (file_size > end)
        res->leaks += (file_size - end + v->block_size - 1) / v->block_size;
    if (res->leaks > 0 && res->first_problem[0] == '\0')
        snprintf(res->first_problem, sizeof(res->first_problem),
                 "%llu data blocks are allocated but unused", (unsigned long long)res->leaks);
    if ((flags & RT_VD_CHECK_REPAIR_LEAKS) && res->leaks > 0 && res->corruptions > 0)
        snprintf(res->repair_refused, sizeof(res->repair_refused),
                 "leaks are not reclaimed while the block map has corruptions");
    if ((flags & RT_VD_CHECK_REPAIR_LEAKS) && res->leaks > 0 && res->corruptions == 0) {
        rc = repair_leaks(vd, v, owner, top, referenced);
        if (rc == RT_OK) {
            res->leaks_fixed = res->leaks;
            res->leaks = 0;
        }
    }
    free(owner);
    return rc;
}

static void vdi_info(rt_vd_t vd, rt_vd_info_t *info)
{
    struct vdi *v = vdi_of(vd);
    info->block_size = v->block_size;
    info->blocks_total = v->blocks;
    for (uint32_t i = 0; i < v->blocks; i++)
        if (entry_kind(v->bmap[i]) == VD_MAP_DATA)
            info->blocks_allocated++;
    snprintf(info->variant, sizeof(info->variant), "%s",
             v->type == VDI_STATIC ? "static" : "dynamic");
}

/* ---------------------------------------------------------------------------------- */
/* Resize. */

/* Grows only: a shrink would leave entries below the new count pointing at data blocks
 * at or past it, which no reader accepts, unless blocks moved (VirtualBox does not
 * shrink either).  The new map entries go into the room between the map and the data
 * (none moves), and are durable before the header that counts them; a static image gets
 * its new data blocks at the end of the file first. */
static int vdi_resize(rt_vd_t vd, uint64_t size, rt_vd_error_t *err)
{
    struct vdi *v = vdi_of(vd);
    if (size < vd->size)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "VDI images cannot shrink (their data blocks would have to move)");
    if (size % VDI_SECTOR != 0)
        return rt__vd_fail(err, RT_ERR_INVALID_PARAMETER,
                           "the new size must be a multiple of %u", VDI_SECTOR);
    uint64_t blocks = size / v->block_size + (size % v->block_size != 0);
    if (blocks > VDI_MAX_BLOCKS)
        return rt__vd_fail(err, RT_ERR_OUT_OF_RANGE,
                           "%llu bytes needs %llu VDI blocks, more than the format allows",
                           (unsigned long long)size, (unsigned long long)blocks);
    uint64_t room = (v->offset_data - v->offset_bmap) / 4u;
    if (blocks > room)
        return rt__vd_fail(err, RT_ERR_NOT_SUPPORTED,
                           "the VDI block map has room for %llu blocks (%llu bytes); growing "
                           "to %llu bytes would need data blocks moved",
                           (unsigned long long)room,
                           (unsigned long long)(room * v->block_size), (unsigned long long)size);
    /* A map with more entries than the old size needed (a header may say so) has the
     * entries already: none are added, and the count of blocks stays. */
    if (blocks < v->blocks)
        blocks = v->blocks;
    uint32_t added = (uint32_t)(blocks - v->blocks);
    bool is_static = v->type == VDI_STATIC;
    uint32_t *bmap = realloc(v->bmap, (size_t)blocks * 4u);
    if (bmap != NULL)
        v->bmap = bmap;
    uint32_t *disk = bmap != NULL ? realloc(v->bmap_disk, (size_t)blocks * 4u) : NULL;
    if (disk != NULL)
        v->bmap_disk = disk;
    uint8_t *le = malloc(added ? (size_t)added * 4u : 1);
    int rc = bmap == NULL || disk == NULL || le == NULL ? RT_ERR_NO_MEMORY : RT_OK;
    uint32_t first_index = v->next_index;
    for (uint32_t i = 0; rc == RT_OK && i < added; i++)
        vd_put_le32(le + 4u * i, is_static ? first_index + i : VDI_FREE);
    if (rc == RT_OK && is_static && added > 0) {
        uint64_t file_size = 0, end = block_host_off(v, first_index + added);
        rc = rt_file_get_size(vd->file, &file_size);
        if (rc == RT_OK && file_size < end)
            rc = rt_file_set_size(vd->file, end);
    }
    if (rc == RT_OK && added > 0)
        rc = rt__vd_meta_write(vd, v->offset_bmap + 4u * (uint64_t)v->blocks, le,
                               (size_t)added * 4u);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    free(le);
    if (rc != RT_OK)
        return rt__vd_fail(err, rc, "cannot write the new VDI block map entries");

    uint8_t *h = v->header;
    uint8_t saved[VDI_HEADER_LEN];
    memcpy(saved, h, sizeof(saved));
    uint32_t count = is_static ? v->count_on_disk + added : v->count_on_disk;
    vd_put_le64(h + OFF_DISK_SIZE, size);
    vd_put_le32(h + OFF_BLOCKS, (uint32_t)blocks);
    vd_put_le32(h + OFF_ALLOCATED, count);
    rc = rt__vd_meta_write(vd, 0, h, VDI_HEADER_LEN);
    if (rc == RT_OK)
        rc = rt__vd_meta_flush(vd);
    if (rc != RT_OK) {
        memcpy(h, saved, sizeof(saved));
        return rt__vd_fail(err, rc, "cannot write the VDI header");
    }
    for (uint32_t i = 0; i < added; i++)
        v->bmap[v->blocks + i] = v->bmap_disk[v->blocks + i] =
            is_static ? first_index + i : VDI_FREE;
    v->blocks = (uint32_t)blocks;
    v->count_on_disk = count;
    if (is_static)
        v->next_index = first_index + added;
    return RT_OK;
}

const struct vd_driver rt__vd_vdi_driver = {
    .name = "vdi",
    .caps = VD_CAP_CREATE | VD_CAP_WRITE | VD_CAP_ALLOC | VD_CAP_CHECK,
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .create = vdi_create,
    .map = vdi_map,
    .alloc = vdi_alloc,
    .alloc_done = vdi_alloc_done,
    .commit = vdi_commit,
    .check = vdi_check,
    .resize = vdi_resize,
    .info = vdi_info,
};
