/*
 * The waiter's spin budget: see internal/spin_budget.h.
 */
#include <config.h>

#include "internal/spin_budget.h"

void rt__spin_budget_init(struct rt__spin_budget *budget, uint32_t max_ns)
{
    budget->ns = 0;
    budget->max_ns = max_ns;
}

void rt__spin_budget_slept(struct rt__spin_budget *budget, uint64_t waited_ns)
{
    uint64_t cover;

    if (waited_ns > budget->max_ns) {
        budget->ns = 0; /* a slow wait: no allowed spin would have caught it */
        return;
    }
    cover = waited_ns + waited_ns / 4; /* waited_ns <= max_ns < 2^32: no overflow */
    if (cover > budget->ns)
        budget->ns = cover < budget->max_ns ? (uint32_t)cover : budget->max_ns;
}
