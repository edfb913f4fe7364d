/* daemon/guard.c — the SIGBUS guard (see guard.h). */
#include "guard.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uintptr_t guard_base, guard_end; /* the armed range */
static int tripped; /* atomic: set by any thread's handler */
static long page_size;

static void on_sigbus(int sig, siginfo_t *si, void *uctx) {
        (void)uctx;
        const uintptr_t a = (uintptr_t)si->si_addr;
        const uintptr_t base = __atomic_load_n(&guard_base, __ATOMIC_ACQUIRE),
                        end = __atomic_load_n(&guard_end, __ATOMIC_ACQUIRE);
        if (a >= base && a < end) {
                void *page = (void *)(a & ~((uintptr_t)page_size - 1));
                /* mmap is a plain system call here: safe enough in a handler */
                if (mmap(page, (size_t)page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
                        __atomic_store_n(&tripped, 1, __ATOMIC_RELEASE);
                        return; /* the load is retried and reads zeros */
                }
        }
        /* not ours (or we cannot patch it): die as we would have */
        signal(sig, SIG_DFL);
        raise(sig);
}

int guard_install(void) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        page_size = sysconf(_SC_PAGESIZE);
        return sigaction(SIGBUS, &sa, NULL) < 0 ? -errno : 0;
}

void guard_arm(const void *base, size_t size) {
        __atomic_store_n(&guard_base, (uintptr_t)base, __ATOMIC_RELEASE);
        __atomic_store_n(&guard_end, (uintptr_t)base + size, __ATOMIC_RELEASE);
        __atomic_store_n(&tripped, 0, __ATOMIC_RELEASE);
}

bool guard_tripped(void) {
        return __atomic_load_n(&tripped, __ATOMIC_ACQUIRE) != 0;
}
