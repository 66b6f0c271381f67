/*
 * Sizes as qemu-img reads them: a decimal number with an optional unit, one of
 * b (bytes), k, M, G, T, P or E (powers of 1024, either case), optionally followed by
 * "B" or "iB" ("64KiB" reads as 64k).  A fraction is allowed before a unit larger than
 * a byte ("1.5G"), and truncated to whole bytes; a fractional byte count is refused,
 * as are signs, spaces, and anything past 2^64 - 1.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "img.h"

/* The multiplier a unit letter stands for; 0 if it is none. */
static uint64_t unit_of(char letter)
{
    static const char units[] = "bkmgtpe";
    const char *unit = letter ? strchr(units, tolower((unsigned char)letter)) : NULL;
    return unit ? 1ull << (10 * (unit - units)) : 0;
}

bool img_parse_size(const char *text, uint64_t *value)
{
    char *end;
    if (!isdigit((unsigned char)text[0]))
        return false;
    errno = 0;
    unsigned long long whole = strtoull(text, &end, 10);
    if (errno)
        return false;
    /* The fraction, kept as digits over a power of ten (at most 18 digits). */
    uint64_t numerator = 0, denominator = 1;
    if (*end == '.') {
        end++;
        if (!isdigit((unsigned char)*end))
            return false;
        for (; isdigit((unsigned char)*end); end++) {
            if (denominator >= 1000000000000000000ull)
                return false;
            numerator = numerator * 10 + (uint64_t)(*end - '0');
            denominator *= 10;
        }
    }
    uint64_t mul = 1;
    if (*end) {
        if ((mul = unit_of(*end)) == 0)
            return false;
        end++;
        if (mul > 1 && strcasecmp(end, "") && strcasecmp(end, "b") && strcasecmp(end, "ib"))
            return false;
        if (mul == 1 && *end)
            return false;
    }
    if (denominator > 1 && mul == 1)
        return false; /* a fraction of a byte */
    if (whole > UINT64_MAX / mul)
        return false;
    uint64_t bytes = (uint64_t)whole * mul;
    /* The fraction adds less than one unit; a long double's 64-bit mantissa holds it
     * to the byte for every unit up to E, and it is truncated, as qemu-img does. */
    uint64_t part = (uint64_t)((long double)numerator * (long double)mul / (long double)denominator);
    if (part > UINT64_MAX - bytes)
        return false;
    *value = bytes + part;
    return true;
}
