/* engine/pool.h — a persistent thread pool: pool_run() runs one function on every thread
 * (the caller is thread 0) and returns when all are done. Between runs threads poll for up to
 * POOL_SPIN_NS (engine_limits.h), then sleep, so the dozens of runs a token needs cost under
 * a microsecond each, not a wake-up or a thread creation. pool_run: one caller thread at a
 * time. */
#pragma once
#include <stdint.h>

typedef struct Pool Pool;

/* thread index in [0, n_threads): split work by it (results must not depend on the split). */
typedef void (*PoolFn)(void *ctx, unsigned thread, unsigned n_threads);

/* n_threads >= 1 in all, including the caller. */
int pool_new(unsigned n_threads, Pool **ret_pool);
Pool *pool_free(Pool *p);
unsigned pool_size(const Pool *p);
void pool_run(Pool *p, PoolFn fn, void *ctx);
/* Pin worker thread t (1..n-1) to CPU cpus[t]; thread 0 is the caller's to pin. */
int pool_pin(Pool *p, const uint16_t *cpus);
/* Pin the calling thread to one CPU. */
int pool_pin_self(unsigned cpu);

/* Contiguous share [*ret_begin, *ret_end) of n items for thread t of nt. */
static inline void pool_share(unsigned long n, unsigned t, unsigned nt, unsigned long *ret_begin,
                              unsigned long *ret_end) {
        *ret_begin = n * t / nt;
        *ret_end = n * (t + 1) / nt;
}
