/* engine/pool.c — the persistent thread pool (see pool.h). A run is published by bumping a
 * generation counter; workers spin on it for a while, then wait on a condition variable. */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>

#define POOL_SPIN_ITERATIONS 1000 /* polls before a worker sleeps (~tens of microseconds) */

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

struct Pool {
        unsigned n_threads;
        pthread_t *threads;       /* [n_threads - 1] */
        pthread_mutex_t lock;
        pthread_cond_t wake, done;
        unsigned generation;      /* bumped per run (atomic) */
        unsigned remaining;       /* workers still running this run (atomic) */
        bool stop;
        PoolFn fn;
        void *ctx;
};

typedef struct WorkerArg {
        Pool *pool;
        unsigned index;
} WorkerArg;

static void *worker_main(void *arg) {
        WorkerArg *wa = arg;
        Pool *p = wa->pool;
        const unsigned index = wa->index;
        unsigned seen = 0;
        free(wa);
        for (;;) {
                unsigned gen;
                int spins = 0;
                while ((gen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE)) == seen && spins < POOL_SPIN_ITERATIONS) {
                        cpu_relax();
                        spins++;
                }
                if (gen == seen) {
                        pthread_mutex_lock(&p->lock);
                        while ((gen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE)) == seen && !p->stop)
                                pthread_cond_wait(&p->wake, &p->lock);
                        pthread_mutex_unlock(&p->lock);
                }
                if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
                        return NULL;
                seen = gen;
                p->fn(p->ctx, index, p->n_threads);
                if (__atomic_sub_fetch(&p->remaining, 1, __ATOMIC_ACQ_REL) == 0) {
                        pthread_mutex_lock(&p->lock);
                        pthread_cond_signal(&p->done);
                        pthread_mutex_unlock(&p->lock);
                }
        }
}

int pool_new(unsigned n_threads, Pool **ret_pool) {
        if (n_threads == 0)
                return -EINVAL;
        Pool *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->n_threads = 1;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->wake, NULL);
        pthread_cond_init(&p->done, NULL);
        p->threads = calloc(n_threads, sizeof(pthread_t));
        if (!p->threads) {
                pool_free(p);
                return -ENOMEM;
        }
        for (unsigned i = 1; i < n_threads; i++) {
                WorkerArg *wa = malloc(sizeof(*wa));
                if (!wa) {
                        pool_free(p);
                        return -ENOMEM;
                }
                *wa = (WorkerArg){ p, i };
                int r = pthread_create(&p->threads[i - 1], NULL, worker_main, wa);
                if (r) {
                        free(wa);
                        pool_free(p);
                        return -r;
                }
                p->n_threads++;
        }
        *ret_pool = p;
        return 0;
}

Pool *pool_free(Pool *p) {
        if (!p)
                return NULL;
        pthread_mutex_lock(&p->lock);
        __atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
        __atomic_add_fetch(&p->generation, 1, __ATOMIC_ACQ_REL);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i + 1 < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        free(p->threads);
        pthread_cond_destroy(&p->wake);
        pthread_cond_destroy(&p->done);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
}

unsigned pool_size(const Pool *p) {
        return p ? p->n_threads : 1;
}

void pool_run(Pool *p, PoolFn fn, void *ctx) {
        if (!p || p->n_threads == 1) {
                fn(ctx, 0, 1);
                return;
        }
        p->fn = fn;
        p->ctx = ctx;
        __atomic_store_n(&p->remaining, p->n_threads - 1, __ATOMIC_RELEASE);
        pthread_mutex_lock(&p->lock);
        __atomic_add_fetch(&p->generation, 1, __ATOMIC_ACQ_REL);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);

        fn(ctx, 0, p->n_threads);

        int spins = 0;
        while (__atomic_load_n(&p->remaining, __ATOMIC_ACQUIRE) != 0 && spins < POOL_SPIN_ITERATIONS) {
                cpu_relax();
                spins++;
        }
        if (__atomic_load_n(&p->remaining, __ATOMIC_ACQUIRE) != 0) {
                pthread_mutex_lock(&p->lock);
                while (__atomic_load_n(&p->remaining, __ATOMIC_ACQUIRE) != 0)
                        pthread_cond_wait(&p->done, &p->lock);
                pthread_mutex_unlock(&p->lock);
        }
}

static int pin(pthread_t t, unsigned cpu) {
        cpu_set_t set;
        if (cpu >= CPU_SETSIZE)
                return -EINVAL;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        return -pthread_setaffinity_np(t, sizeof(set), &set);
}

int pool_pin(Pool *p, const uint16_t *cpus) {
        for (unsigned t = 1; p && t < p->n_threads; t++) {
                int r = pin(p->threads[t - 1], cpus[t]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int pool_pin_self(unsigned cpu) {
        return pin(pthread_self(), cpu);
}
