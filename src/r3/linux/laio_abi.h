/*
 * The Linux kernel AIO ABI, written out by hand (no libaio, no <linux/aio_abi.h>), so
 * that the request handle can embed an iocb and the layouts are ours to check.
 *
 * The kernel's structures are built only from fixed-width fields, with 64-bit fields
 * on 8-byte offsets, so one definition serves 32- and 64-bit hosts.  The places that
 * differ are pointers and endianness:
 *  - user pointers (aio_buf, data, obj) are carried in 64-bit fields.  On a 32-bit host
 *    the upper half is explicit padding that must be zero; storing through uintptr_t
 *    into the whole uint64_t does exactly that, with no union of pointer-plus-pad whose
 *    pad position depends on byte order (what libaio's PADDEDptr gets wrong to read).
 *  - aio_key and aio_rw_flags swap places on big-endian hosts, as the kernel's own
 *    header does, so that the 64-bit word they share keeps the same meaning.
 * Every offset and size is asserted below; testcase/laio_abi_m32.sh compiles this
 * header with -m32 and compares it with the kernel's header, so both layouts are
 * proven on every CI run.
 */
#ifndef RT_LAIO_ABI_H
#define RT_LAIO_ABI_H

#include <stddef.h>
#include <stdint.h>

/* Kernel AIO context id: a kernel `unsigned long`, 32 bits on 32-bit hosts. */
typedef unsigned long laio_context_t;

enum laio_opcode {
    LAIO_CMD_PREAD = 0,
    LAIO_CMD_PWRITE = 1,
    LAIO_CMD_FSYNC = 2,
    LAIO_CMD_FDSYNC = 3,
    LAIO_CMD_POLL = 5,
    LAIO_CMD_NOOP = 6,
    LAIO_CMD_PREADV = 7,
    LAIO_CMD_PWRITEV = 8,
};

/* aio_flags: post an eventfd when this iocb completes. */
#define LAIO_FLAG_RESFD (1u << 0)
/* aio_rw_flags: the write is durable on completion (RWF_DSYNC, Linux 4.13). */
#define LAIO_RWF_DSYNC 0x2

struct laio_iocb {
    uint64_t aio_data; /*  0: returned in io_event.data (our request pointer) */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    int32_t aio_rw_flags; /*  8: RWF_* flags */
    uint32_t aio_key;     /* 12: set by the kernel; must be 0 on submit */
#else
    uint32_t aio_key;     /*  8: set by the kernel; must be 0 on submit */
    int32_t aio_rw_flags; /* 12: RWF_* flags */
#endif
    uint16_t aio_lio_opcode; /* 16: enum laio_opcode */
    int16_t aio_reqprio;     /* 18 */
    uint32_t aio_fildes;     /* 20 */
    uint64_t aio_buf;        /* 24: buffer, or struct iovec array for PREADV/PWRITEV;
                              *     upper 32 bits are zero padding on 32-bit hosts */
    uint64_t aio_nbytes;     /* 32: bytes, or iovec count */
    int64_t aio_offset;      /* 40 */
    uint64_t aio_reserved2;  /* 48: must be 0 */
    uint32_t aio_flags;      /* 56: LAIO_FLAG_* */
    uint32_t aio_resfd;      /* 60: eventfd for LAIO_FLAG_RESFD */
};                           /* 64 */

struct laio_event {
    uint64_t data; /*  0: the iocb's aio_data */
    uint64_t obj;  /*  8: the iocb's address, zero-extended on 32-bit hosts */
    int64_t res;   /* 16: bytes transferred, or a negative errno */
    int64_t res2;  /* 24: secondary result, 0 for file I/O */
};                 /* 32 */

/* The completion ring the kernel maps at the address io_setup returns as the context
 * id.  Reading it lets the single reaper collect events without io_getevents(). */
struct laio_ring {
    uint32_t id;
    uint32_t nr;   /* number of event slots */
    uint32_t head; /* written by the reaper */
    uint32_t tail; /* written by the kernel */
    uint32_t magic;
    uint32_t compat_features;
    uint32_t incompat_features;
    uint32_t header_length; /* size of this header */
    struct laio_event events[];
};

#define LAIO_RING_MAGIC 0xa10a10a1u

/* The kernel's pre-time64 `struct timespec` for io_getevents: two longs on every host
 * (the 32-bit syscall takes 32-bit fields even where libc's timespec is 64-bit). */
struct laio_timespec {
    long tv_sec;
    long tv_nsec;
};

#define LAIO_ASSERT_OFFSET(type, field, off)                                                       \
    _Static_assert(offsetof(struct type, field) == (off), #type "." #field " offset")

LAIO_ASSERT_OFFSET(laio_iocb, aio_data, 0);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
LAIO_ASSERT_OFFSET(laio_iocb, aio_rw_flags, 8);
LAIO_ASSERT_OFFSET(laio_iocb, aio_key, 12);
#else
LAIO_ASSERT_OFFSET(laio_iocb, aio_key, 8);
LAIO_ASSERT_OFFSET(laio_iocb, aio_rw_flags, 12);
#endif
LAIO_ASSERT_OFFSET(laio_iocb, aio_lio_opcode, 16);
LAIO_ASSERT_OFFSET(laio_iocb, aio_reqprio, 18);
LAIO_ASSERT_OFFSET(laio_iocb, aio_fildes, 20);
LAIO_ASSERT_OFFSET(laio_iocb, aio_buf, 24);
LAIO_ASSERT_OFFSET(laio_iocb, aio_nbytes, 32);
LAIO_ASSERT_OFFSET(laio_iocb, aio_offset, 40);
LAIO_ASSERT_OFFSET(laio_iocb, aio_reserved2, 48);
LAIO_ASSERT_OFFSET(laio_iocb, aio_flags, 56);
LAIO_ASSERT_OFFSET(laio_iocb, aio_resfd, 60);
_Static_assert(sizeof(struct laio_iocb) == 64, "struct iocb is 64 bytes");

LAIO_ASSERT_OFFSET(laio_event, data, 0);
LAIO_ASSERT_OFFSET(laio_event, obj, 8);
LAIO_ASSERT_OFFSET(laio_event, res, 16);
LAIO_ASSERT_OFFSET(laio_event, res2, 24);
_Static_assert(sizeof(struct laio_event) == 32, "struct io_event is 32 bytes");

LAIO_ASSERT_OFFSET(laio_ring, nr, 4);
LAIO_ASSERT_OFFSET(laio_ring, head, 8);
LAIO_ASSERT_OFFSET(laio_ring, tail, 12);
LAIO_ASSERT_OFFSET(laio_ring, magic, 16);
LAIO_ASSERT_OFFSET(laio_ring, header_length, 28);
LAIO_ASSERT_OFFSET(laio_ring, events, 32);

_Static_assert(sizeof(struct laio_timespec) == 2 * sizeof(long), "old kernel timespec");
_Static_assert(sizeof(laio_context_t) == sizeof(void *), "aio_context_t is a kernel long");

#endif /* RT_LAIO_ABI_H */
