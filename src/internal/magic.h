/*
 * Handle magic values.  Every handle starts life with its type's magic, every public
 * entry checks it, and freeing a handle overwrites it with the DEAD value, so a stale or
 * foreign pointer is answered with RT_ERR_INVALID_HANDLE instead of being trusted.
 * Handle memory is never returned to the allocator (see handle_pool.h), which is what
 * makes reading the magic of a freed handle safe.
 */
#ifndef RT_INTERNAL_MAGIC_H
#define RT_INTERNAL_MAGIC_H

#define RT__MAGIC_FILE    0x19690720u /* Apollo 11 lands */
#define RT__MAGIC_AIO_CTX 0x19571004u /* Sputnik 1 */
#define RT__MAGIC_AIO_REQ 0x19610412u /* Vostok 1 */
#define RT__MAGIC_VD       0x19760720u /* Viking 1 lands on Mars */
#define RT__MAGIC_VD_QUEUE 0x19770905u /* Voyager 1 */
#define RT__MAGIC_DEAD    0xdeadbeefu

#endif /* RT_INTERNAL_MAGIC_H */
