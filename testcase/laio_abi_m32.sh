#!/bin/sh
# Proves the hand-written kernel AIO layouts (src/r3/linux/laio_abi.h) on a 32-bit
# host ABI as well as the native one: compiles a unit that includes our header and the
# kernel's <linux/aio_abi.h>, and asserts that every field sits at the same offset in
# both, with -m32 and natively.  Then compiles the backend itself (aio_linux.c,
# laio_sys.c) with -m32, so its pointer-to-u64 conversions are proven warning-free on a
# 32-bit host too.  Exits 77 when no 32-bit toolchain is installed (Debian:
# gcc-multilib).
set -u
: "${CC:=cc}"
: "${top_srcdir:=.}"
: "${top_builddir:=.}"
unit=$(mktemp "${TMPDIR:-/tmp}/laio_abi.XXXXXX.c") || exit 1
# The trap names the file itself, not the variable, so no later use of $unit can
# turn it into a removal of something else.
trap "rm -f '$unit'" EXIT

cat >"$unit" <<'C'
#include <linux/aio_abi.h>
#include "r3/linux/laio_abi.h"
#define SAME(ours, field, theirs, kfield) \
    _Static_assert(offsetof(struct ours, field) == offsetof(struct theirs, kfield) && \
                   sizeof(((struct ours *)0)->field) == sizeof(((struct theirs *)0)->kfield), \
                   #ours "." #field " differs from the kernel's")
SAME(laio_iocb, aio_data, iocb, aio_data);
SAME(laio_iocb, aio_key, iocb, aio_key);
SAME(laio_iocb, aio_rw_flags, iocb, aio_rw_flags);
SAME(laio_iocb, aio_lio_opcode, iocb, aio_lio_opcode);
SAME(laio_iocb, aio_reqprio, iocb, aio_reqprio);
SAME(laio_iocb, aio_fildes, iocb, aio_fildes);
SAME(laio_iocb, aio_buf, iocb, aio_buf);
SAME(laio_iocb, aio_nbytes, iocb, aio_nbytes);
SAME(laio_iocb, aio_offset, iocb, aio_offset);
SAME(laio_iocb, aio_reserved2, iocb, aio_reserved2);
SAME(laio_iocb, aio_flags, iocb, aio_flags);
SAME(laio_iocb, aio_resfd, iocb, aio_resfd);
_Static_assert(sizeof(struct laio_iocb) == sizeof(struct iocb), "iocb size");
SAME(laio_event, data, io_event, data);
SAME(laio_event, obj, io_event, obj);
SAME(laio_event, res, io_event, res);
SAME(laio_event, res2, io_event, res2);
_Static_assert(sizeof(struct laio_event) == sizeof(struct io_event), "io_event size");
_Static_assert(sizeof(laio_context_t) == sizeof(aio_context_t), "aio_context_t size");
#define SAME_OP(ours, theirs) _Static_assert((int)(ours) == (int)(theirs), #ours)
SAME_OP(LAIO_CMD_PREAD, IOCB_CMD_PREAD);
SAME_OP(LAIO_CMD_PWRITE, IOCB_CMD_PWRITE);
SAME_OP(LAIO_CMD_FSYNC, IOCB_CMD_FSYNC);
SAME_OP(LAIO_CMD_FDSYNC, IOCB_CMD_FDSYNC);
SAME_OP(LAIO_CMD_PREADV, IOCB_CMD_PREADV);
SAME_OP(LAIO_CMD_PWRITEV, IOCB_CMD_PWRITEV);
_Static_assert(LAIO_FLAG_RESFD == IOCB_FLAG_RESFD, "IOCB_FLAG_RESFD");
int laio_abi_check;
C

# Compiles the unit; shows at most 20 lines of diagnostics, returns the compiler's status.
compile() {
    out=$($CC "$@" -std=gnu11 -Wall -Wextra -Werror -fsyntax-only -I"$top_srcdir/src" "$unit" 2>&1)
    status=$?
    [ -n "$out" ] && printf '%s\n' "$out" | head -n 20
    return $status
}

if ! compile; then
    echo "FAIL: native layout of laio_abi.h differs from the kernel's"
    exit 1
fi
echo "native: laio_abi.h matches <linux/aio_abi.h>"

probe=$(mktemp "${TMPDIR:-/tmp}/m32probe.XXXXXX.c") || exit 1
echo 'int main(void) { return 0; }' >"$probe"
if ! $CC -m32 -o /dev/null "$probe" 2>/dev/null; then
    rm -f "$probe"
    echo "SKIP: no 32-bit toolchain for -m32 (install gcc-multilib)"
    exit 77
fi
rm -f "$probe"
if ! compile -m32; then
    echo "FAIL: 32-bit layout of laio_abi.h differs from the kernel's"
    exit 1
fi
echo "-m32: laio_abi.h matches <linux/aio_abi.h>"

for source in "$top_srcdir/src/r3/linux/aio_linux.c" "$top_srcdir/src/r3/linux/laio_sys.c"; do
    out=$($CC -m32 -std=gnu11 -Wall -Wextra -Werror -fsyntax-only -I"$top_srcdir/include" \
        -I"$top_srcdir/src" -I"$top_builddir" -I"$top_builddir/src" \
        -include "$top_builddir/config.h" "$source" 2>&1)
    if [ $? -ne 0 ]; then
        printf '%s\n' "$out" | head -n 20
        echo "FAIL: $(basename "$source") does not compile cleanly with -m32"
        exit 1
    fi
    echo "-m32: $(basename "$source") compiles warning-free"
done
exit 0
