/*
 * How long the waiter of a context spins before it sleeps, learned from the waits
 * before it, in the manner of QEMU's adaptive aio-poll.
 *
 * Spinning saves the round trip of a sleep and a wake-up, but it costs CPU, and on a
 * VM a busy vCPU also slows the host side of its own I/O: on the reference VM a fixed
 * 20 us spin at depth 1 caught some fast completions yet added about 2 us to the
 * median of all the others.  So the budget starts at nothing and follows the waits:
 *  - a sleep that ended with news within max_ns of the spin's start: the next spin is
 *    made long enough to cover that wait, plus a quarter (it would have been caught);
 *  - news later than max_ns: back to no spin (no allowed spin would have caught it);
 *  - a spin that catches news ends early and changes nothing.
 * A device that answers in tens of microseconds thus gets a waiter that spins across
 * its latency when the backend allows that (max_ns), and a slower one a waiter that
 * sleeps at once, wasting at most one spin per slow wait.
 *
 * The waiter's only: the context's one-waiter rule orders every access.
 */
#ifndef RT_INTERNAL_SPIN_BUDGET_H
#define RT_INTERNAL_SPIN_BUDGET_H

#include <stdint.h>

struct rt__spin_budget {
    uint32_t ns;     /* the next spin; 0: sleep at once */
    uint32_t max_ns; /* the longest it may become */
};

/** No spin to start with; it may grow up to @a max_ns. */
void rt__spin_budget_init(struct rt__spin_budget *budget, uint32_t max_ns);

/** After a spin that found nothing and a sleep that ended with news @a waited_ns after
 *  the spin began. */
void rt__spin_budget_slept(struct rt__spin_budget *budget, uint64_t waited_ns);

#endif /* RT_INTERNAL_SPIN_BUDGET_H */
