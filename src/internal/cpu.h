/*
 * A hint for spin loops: tells the CPU this thread is busy-waiting, so a sibling
 * hyper-thread gets the core and the loop does not flood the memory system.
 */
#ifndef RT_INTERNAL_CPU_H
#define RT_INTERNAL_CPU_H

static inline void rt__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif /* RT_INTERNAL_CPU_H */
